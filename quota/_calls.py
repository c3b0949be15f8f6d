"""The gate's call path to Redis: FCALL over a socket owned by the calling thread.

redis-py's command layer (pool checkout and return, retry wrapper, observability
hooks, per-argument type checks before packing) and its reply reader cost, together,
about a third of a hot-path call's wall time on a small machine (docs/BENCHMARKS.md).
The hot path needs none of it. Each thread opens one redis-py connection, so the
handshake (TLS, AUTH, SELECT, client name) stays redis-py's; from then on it writes
FCALLs packed by hiredis to that connection's socket and reads the replies with its
own hiredis reader.

Connections are the caller's threads': each thread opens one on its first call and it
is closed when the thread ends (its wire is garbage, a finalizer closes the socket),
when it fails, or on `close`. They are made outside redis-py's pool count (which
only grows, so 100 threads or ~33 failed calls would exhaust it for good). A
`Breaker` counts failed calls: while it is not closed, calls fail at once with
`CircuitOpen` instead of waiting for a connect timeout, and a prober thread of this
layer (not a caller) PINGs the server every ``reset_seconds`` until it answers.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import hiredis
import redis
from redis.backoff import NoBackoff
from redis.connection import AbstractConnection
from redis.retry import Retry

from quota import metrics, process
from quota.breaker import Breaker
from quota.scripts import Library, is_demoted, is_missing, is_unavailable

_READ_SIZE = 65536
#: The calls that count usage: with a replica ack they are followed by WAIT.
WAITED = frozenset({"commit", "record"})
_WIRE_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class CircuitOpen(redis.exceptions.ConnectionError):
    """The breaker is open: the call was not sent."""


class LostReply(redis.exceptions.TimeoutError):
    """The connection dropped after the call was written: it may have run, so the
    transport does not send it again (the gate's outage wait may: every script can run
    twice)."""


class Unreplicated(redis.exceptions.RedisError):
    """A commit or record counted on the primary that no replica acknowledged within
    QUOTA_REPLICA_ACK ms (a failover may lose it): ``reply`` is the call's own reply.
    The server is healthy, so the breaker does not count it; the gate keeps the event
    in the ledger at once."""

    def __init__(self, reply: str) -> None:
        super().__init__("no replica acknowledged the write")
        self.reply = reply


def counted(reply: object) -> bool:
    """Whether a usage call's reply says it wrote (replies.py: codes below 0 did not)."""
    return isinstance(reply, str) and not reply.startswith("-")


def _close(conn: AbstractConnection) -> None:
    conn.disconnect()  # type: ignore[no-untyped-call]


class _Wire:
    """One thread's connection: redis-py's, for the handshake and for closing; its
    socket, for the calls; our reader, for the replies."""

    __slots__ = ("__weakref__", "buf", "close", "conn", "pid", "reader", "sock")

    def __init__(self, conn: AbstractConnection, decode: bool) -> None:
        conn.connect()  # type: ignore[no-untyped-call]
        self.conn = conn
        # Runs once: on close, or when the owning thread's local storage is collected.
        self.close = weakref.finalize(self, _close, conn)
        self.sock: socket.socket = conn._sock  # type: ignore[assignment]
        self.pid = process.pid
        self.buf = bytearray(_READ_SIZE)  # read into, not a fresh 64 KiB bytes per recv
        timeout = self.sock.gettimeout()
        if timeout is not None and not isinstance(self.sock, ssl.SSLSocket):
            # CPython polls before every send and recv on a socket with a timeout: two
            # system calls more per FCALL. The kernel keeps the same timeout per call
            # (SO_RCVTIMEO, SO_SNDTIMEO) on a blocking socket, where an expiry is EAGAIN.
            # Not under TLS, where an expiry would surface as an SSL error, not a timeout.
            seconds = int(timeout)
            tv = struct.pack("ll", seconds, int((timeout - seconds) * 1_000_000))
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
            self.sock.settimeout(None)
        # Error replies come back as values (not raised), so that a batch can read on.
        self.reader = hiredis.Reader(
            encoding="utf-8" if decode else None,
            errors="surrogateescape",  # a rate state is binary (quota/replies.py)
            replyError=redis.exceptions.ResponseError,
        )

    def send(self, packed: bytes) -> None:
        try:
            self.sock.sendall(packed)
        except (TimeoutError, BlockingIOError) as exc:
            raise redis.exceptions.TimeoutError(f"Timeout writing to Redis: {exc}") from exc
        except OSError as exc:
            raise redis.exceptions.ConnectionError(f"Error writing to Redis: {exc}") from exc

    def read(self) -> Any:
        reader = self.reader
        reply = reader.gets()
        while reply is False:  # hiredis: not a whole reply yet
            try:
                n = self.sock.recv_into(self.buf)
            except (TimeoutError, BlockingIOError) as exc:
                raise redis.exceptions.TimeoutError(f"Timeout reading from Redis: {exc}") from exc
            except OSError as exc:
                raise redis.exceptions.ConnectionError(f"Error reading from Redis: {exc}") from exc
            if not n:
                raise redis.exceptions.ConnectionError("Redis closed the connection")
            # As redis-py's own hiredis parser does; hiredis's stub says bytes only.
            reader.feed(self.buf, 0, n)  # type: ignore[arg-type]
            reply = reader.gets()
        return reply


class ScriptCaller:
    def __init__(self, client: redis.Redis, library: Library, breaker: Breaker) -> None:
        self._client = client
        self._library = library
        self.breaker = breaker
        #: Called when the server lacks the function library: it lost its data (a
        #: restart without persistence, a flush), or never had it.
        self.on_missing: Callable[[], None] | None = None
        #: Called when a new connection reaches another server than the last one did.
        self.on_failover: Callable[[], None] | None = None
        self._peer: Any = None
        pool = client.connection_pool
        self._connection_class = pool.connection_class
        self._connection_kwargs = pool.connection_kwargs
        # No redis-py retry (with its backoff) inside a connect: this layer retries, at
        # once, and a probe of a dead server must fail in microseconds, not ~0.2 s.
        self._no_retry = Retry(NoBackoff(), 0)
        self._decode = bool(self._connection_kwargs.get("decode_responses"))
        self._local = threading.local()
        self._lock = threading.Lock()
        # Every open wire, for close(); weak, so that a dead thread's wire is collected.
        self._all: weakref.WeakSet[_Wire] = weakref.WeakSet()
        self._closed = threading.Event()
        self._prober: threading.Thread | None = None
        self._prober_pid = 0
        self._wait = b""  # WAIT 1 <ms>, packed: `replica_ack`

    def replica_ack(self, ms: int) -> None:
        """Follow each commit and record with ``WAIT 1 <ms>`` in the same write, so that
        its reply comes once a replica has the change (0: do not wait). A failover then
        cannot lose usage the caller was told was counted."""
        self._wait = hiredis.pack_command(("WAIT", 1, ms)) if ms else b""  # type: ignore[arg-type]

    @property
    def open_connections(self) -> int:
        """Connections open now, in this process (one per live thread that called)."""
        pid = process.pid
        with self._lock:
            return sum(1 for w in self._all if w.pid == pid and w.close.alive)

    def _wire(self) -> _Wire:
        wire: _Wire | None = getattr(self._local, "wire", None)
        if wire is None or wire.pid != process.pid:  # a forked child opens its own
            self._local.wire = None
            kwargs = {**self._connection_kwargs, "retry": self._no_retry}
            wire = _Wire(self._connection_class(**kwargs), self._decode)
            self._local.wire = wire
            with self._lock:
                self._all.add(wire)
            self._seen_peer(wire.sock)
        return wire

    def _seen_peer(self, sock: socket.socket) -> None:
        """A new connection reached another server than the last (Sentinel named a new
        primary): tell `on_failover`, as writes the old one took may be lost."""
        try:
            peer = sock.getpeername()
        except OSError:
            return
        last, self._peer = self._peer, peer
        if last is not None and last != peer and self.on_failover is not None:
            self.on_failover()

    def _drop(self) -> None:
        wire: _Wire | None = getattr(self._local, "wire", None)
        if wire is not None:
            wire.close()
            self._local.wire = None
            with self._lock:
                self._all.discard(wire)

    def _gate(self) -> None:
        """Refuse at once while the breaker is not closed."""
        if not self.breaker.allow():
            self._probing()
            raise CircuitOpen("Redis circuit open: recent calls failed")

    def _probing(self) -> None:
        """Have this process's prober running (a forked child starts its own)."""
        prober = self._prober
        if prober is not None and self._prober_pid == process.pid and prober.is_alive():
            return
        with self._lock:
            prober = self._prober
            if prober is not None and self._prober_pid == process.pid and prober.is_alive():
                return
            self._prober_pid = process.pid
            self._prober = threading.Thread(target=self._probe, name="quota-probe", daemon=True)
            self._prober.start()

    def _probe(self) -> None:
        """Until the circuit closes: every ``reset_seconds``, PING over a new connection."""
        breaker = self.breaker
        while breaker.state != "closed" and not self._closed.wait(breaker.probe_in()):
            if not breaker.probe_due():
                continue
            kwargs = {**self._connection_kwargs, "retry": self._no_retry}
            conn = self._connection_class(**kwargs)
            try:
                conn.connect()
                conn.send_command("PING")
                pong = conn.read_response()
            except redis.exceptions.RedisError:
                breaker.failure()  # refused, timed out, or LOADING/BUSY: open again
            else:
                if pong in ("PONG", b"PONG", True):
                    breaker.success()
                else:
                    breaker.failure()
            finally:
                _close(conn)

    def __call__(self, op: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """FCALL ``op`` once and return its reply, by `call_each`'s rules. The hot path's
        own loop: through call_each's closures and generator a single call costs the
        client ~3.4k more instructions (~10 % of the call; counted with callgrind)."""
        breaker = self.breaker
        if breaker.state != "closed":
            self._gate()
        name = self._library.functions[op]
        wait = self._wait
        if wait and op not in WAITED:
            wait = b""
        for attempt in range(3):
            try:
                wire = self._wire()
                packed = hiredis.pack_command(("FCALL", name, len(keys), *keys, *args))
                wire.send(packed + wait if wait else packed)
                reply = wire.read()
                acked = wire.read() if wait else 1
            except _WIRE_ERRORS as exc:
                self._failed(exc, attempt)
                continue
            if not acked and counted(reply):
                metrics.UNREPLICATED.inc()
                raise Unreplicated(reply)
            if not isinstance(reply, redis.exceptions.ResponseError):
                if breaker.failures or breaker.state != "closed":
                    breaker.success()
                return reply
            if is_demoted(reply):  # not run: again, on a connection to the new primary
                self._failed(redis.exceptions.ConnectionError(str(reply)), attempt)
                continue
            if not is_missing(reply):
                if is_unavailable(reply):
                    self._failure()
                raise reply
            self._missing()
        raise redis.exceptions.ResponseError(f"function library {self._library.name} not loaded")

    def _missing(self) -> None:
        if self.on_missing is not None:
            self.on_missing()
        self.load()

    def load(self) -> None:
        """Load the library through the calling thread's own connection: a pooled one
        may be a stale socket to a server that restarted."""
        wire = self._wire()
        load = ("FUNCTION", "LOAD", "REPLACE", self._library.source)
        wire.send(hiredis.pack_command(load))  # type: ignore[arg-type]
        reply = wire.read()
        if isinstance(reply, redis.exceptions.ResponseError):
            raise reply

    def call_each(
        self,
        op: str,
        calls: Callable[[], Iterable[tuple[Sequence[Any], Sequence[Any]]]],
        handle: Callable[[int, Any], None],
    ) -> None:
        """FCALL ``op`` once per ``(keys, args)`` that ``calls()`` yields, in one round
        trip: each is sent as soon as it is built, and ``handle(n, reply)`` runs as each
        reply arrives, so the client builds and parses while Redis works.

        A library the server does not have is loaded and the batch sent again (``calls``
        is a factory so that it can be). A connection error is retried on a new
        connection, twice, as the client's own retry would; a timeout is never retried,
        because the function may have run. Batches of more than one call are for
        operations that may run twice (read-only, or version-guarded as budget_put)."""
        self._gate()
        name = self._library.functions[op]
        for attempt in range(3):
            try:
                wire = self._wire()
                sent = 0
                for keys, args in calls():
                    wire.send(hiredis.pack_command(("FCALL", name, len(keys), *keys, *args)))
                    sent += 1
            except _WIRE_ERRORS as exc:
                self._failed(exc, attempt)
                continue
            try:
                self.read_batch(wire, sent, handle, attempt)
                return
            except _WIRE_ERRORS:
                continue  # read_batch raised for good unless this attempt may go again
            except redis.exceptions.ResponseError as exc:
                if not is_missing(exc):
                    raise  # else loaded by read_batch: the batch again
        raise redis.exceptions.ResponseError(f"function library {self._library.name} not loaded")

    def asking(self, op: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """FCALL ``op`` once after ASKING, in one write: a Cluster slot being migrated to
        this node (quota/_cluster.py). The reply, an error reply as a value; a library the
        node lacks is loaded and the call sent again. Never retried on a failed wire."""
        self._gate()
        name = self._library.functions[op]
        packed = hiredis.pack_command(("ASKING",)) + hiredis.pack_command(
            ("FCALL", name, len(keys), *keys, *args)
        )
        for _ in range(2):
            try:
                wire = self._wire()
                wire.send(packed)
                wire.read()  # +OK
                reply = wire.read()
            except _WIRE_ERRORS as exc:
                self._failed(exc, 2)
                raise
            if not is_missing(reply):
                return reply
            self._missing()
        return reply

    def write_batch(self, packed: Sequence[bytes]) -> _Wire:
        """Write commands packed by the caller, as one write; `read_batch` reads the
        replies. For a caller that writes to several servers before reading any."""
        self._gate()
        try:
            wire = self._wire()
            wire.send(b"".join(packed))
        except _WIRE_ERRORS as exc:
            self._failed(exc, 2)
            raise
        return wire

    def read_batch(
        self, wire: _Wire, count: int, handle: Callable[[int, Any], None], attempt: int = 2
    ) -> None:
        """Read ``count`` replies of a batch, by `call_each`'s rules; raises the first
        error reply once all are read, and a missing library's (after loading it), so
        that the caller sends the batch again. A failed connection raises: for good
        (`_failed`) unless ``attempt`` may go again."""
        missing: redis.exceptions.ResponseError | None = None
        error: redis.exceptions.ResponseError | None = None
        try:
            for n in range(count):
                reply = wire.read()
                if isinstance(reply, redis.exceptions.ResponseError):
                    if is_missing(reply):
                        missing = missing or reply
                    else:
                        error = error or reply
                elif missing is None and error is None:
                    handle(n, reply)
        except _WIRE_ERRORS as exc:
            self._failed(exc, attempt)
            raise
        except BaseException:
            self._drop()  # unread replies would answer the next call
            raise
        if error is not None:
            if is_unavailable(error):
                self._failure()
            raise error
        if self.breaker.failures or self.breaker.state != "closed":
            self.breaker.success()
        if missing is not None:
            self._missing()
            raise missing

    def discard(self) -> None:
        """Drop this thread's connection (replies left unread on it)."""
        self._drop()

    def _failed(self, exc: redis.exceptions.RedisError, attempt: int) -> None:
        """A call's connection failed: drop it, then raise ``exc`` if it was a timeout
        (the function may have run) or the third failure; else the caller retries on a
        new connection."""
        self._drop()
        if isinstance(exc, redis.exceptions.TimeoutError) or attempt == 2:
            self._failure()
            raise exc

    def _failure(self) -> None:
        self.breaker.failure()
        if not self.breaker.allow():
            self._probing()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            wires = list(self._all)
            self._all.clear()
        for wire in wires:
            wire.close()
