"""The asyncio twin of _calls.py: an `AsyncGate`'s calls to Redis, over one pipelined
connection (and, with QUOTA_REPLICA_ACK, the calls followed by WAIT, which blocks its
connection until a replica acknowledges, over connections of their own).

A call on an idle connection is written at once; calls that tasks issue while others
are in flight are written together, once per loop iteration (``call_soon``, no timer),
and the connection's protocol hands the replies to them in order as they arrive. A
task cancelled while its call is in flight leaves a cancelled future behind; its reply
is still consumed and dropped, so the connection never goes out of step (the call
itself may have run: a reserve's hold then ends with its lease). A timeout or a broken
connection fails every call on it and closes it; calls already written fail as
timeouts (they may have run, and are never retried), calls not yet written as
connection errors (retried on a new connection). The same `Breaker` as the sync
transport counts failures; a prober task, never a caller, PINGs Redis while the circuit
is not closed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import hiredis
import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from quota import metrics, process
from quota._calls import WAITED, CircuitOpen, LostReply, Unreplicated, counted
from quota._exceptions import WrongEventLoop
from quota.breaker import Breaker
from quota.scripts import Library, is_demoted, is_missing, is_unavailable

#: Connections an AsyncGate opens to one server for calls followed by WAIT, at most.
ACKED_WIRES = 32
_WIRE_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class _Wire(asyncio.Protocol):
    """One connection: redis-py's for the handshake, then its transport with this
    protocol, so that replies are parsed as they arrive (no reader task to wake)."""

    def __init__(self, conn: redis.asyncio.Connection, decode: bool, timeout: float | None):
        self.conn = conn
        self.loop = asyncio.get_running_loop()
        self.pid = process.pid
        self.timeout = timeout
        self.parser = hiredis.Reader(
            encoding="utf-8" if decode else None,
            errors="surrogateescape",  # a rate state is binary (quota/replies.py)
            replyError=redis.exceptions.ResponseError,
        )
        self.pending: deque[asyncio.Future[Any]] = deque()  # in the order sent
        self.sent_at: deque[float] = deque()  # when each written, unanswered call went out
        self.outbox: list[bytes] = []
        self.error: BaseException | None = None
        self._timer: asyncio.TimerHandle | None = None
        # Kept: a StreamWriter collected closes its transport.
        self.writer: asyncio.StreamWriter = conn._writer  # type: ignore[assignment]
        self.transport = self.writer.transport
        self.transport.set_protocol(self)
        conn._reader = conn._writer = None  # the transport is ours now, and closed by fail()

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue one command; its reply arrives in the future."""
        if self.error is not None:
            raise redis.exceptions.ConnectionError(f"Redis connection lost: {self.error}")
        fut: asyncio.Future[Any] = self.loop.create_future()
        idle = not self.pending
        self.pending.append(fut)
        if not self.outbox and not idle:
            self.loop.call_soon(self._flush)  # after the tasks that are ready now
        self.outbox.append(packed)
        if idle:  # nothing in flight: a lone call goes at once
            self._flush()
        return fut

    def _flush(self) -> None:
        if not self.outbox or self.error is not None:
            return
        self.transport.write(b"".join(self.outbox))
        if self.timeout is not None:
            self.sent_at.extend([self.loop.time()] * len(self.outbox))
            if self._timer is None:
                self._timer = self.loop.call_later(self.timeout, self._watch)
        self.outbox.clear()

    def _watch(self) -> None:
        """The oldest written call past the timeout ends the connection (Redis hung)."""
        self._timer = None
        if not self.sent_at or self.error is not None:
            return
        assert self.timeout is not None
        late = self.loop.time() - self.sent_at[0]
        if late >= self.timeout:
            self.fail(redis.exceptions.TimeoutError("Timeout reading from Redis"))
        else:
            self._timer = self.loop.call_later(self.timeout - late, self._watch)

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        pending, sent_at = self.pending, self.sent_at
        while (reply := self.parser.gets()) is not False:
            fut = pending.popleft()
            if sent_at:
                sent_at.popleft()
            if not fut.done():  # a cancelled caller's reply is dropped here
                fut.set_result(reply)

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(exc or redis.exceptions.ConnectionError("Redis closed the connection"))

    def fail(self, exc: BaseException) -> None:
        """End the connection: what was written may have run (a timeout for its caller),
        what was not can go again (a connection error)."""
        if self.error is None:
            self.error = exc
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        unsent = len(self.outbox)
        self.outbox.clear()
        self.sent_at.clear()
        written = len(self.pending) - unsent
        for i, fut in enumerate(self.pending):
            if not fut.done():
                cls = LostReply if i < written else redis.exceptions.ConnectionError
                fut.set_exception(cls(f"Redis connection lost: {exc}"))
        self.pending.clear()
        self.transport.close()


class AsyncScriptCaller:
    """FCALLs and plain commands for one AsyncGate, on one event loop."""

    def __init__(self, client: redis.asyncio.Redis, library: Library, breaker: Breaker) -> None:
        self._library = library
        self.breaker = breaker
        pool = client.connection_pool
        self._connection_class = pool.connection_class
        self._pool_kwargs = pool.connection_kwargs  # read at each connect, as redis-py does
        self._no_retry = Retry(NoBackoff(), 0)
        self._decode = bool(self._pool_kwargs.get("decode_responses"))
        self._timeout: float | None = self._pool_kwargs.get("socket_timeout")
        #: Awaited when the server lacks the function library.
        self.on_missing: Callable[[], Awaitable[None]] | None = None
        #: Called when a new connection reaches another server than the last one did.
        self.on_failover: Callable[[], None] | None = None
        self._peer: Any = None
        self._wire: _Wire | None = None
        self._acked: list[_Wire] = []  # `_acked_wire`'s
        self._connecting: asyncio.Lock | None = None
        self._connecting_loop: asyncio.AbstractEventLoop | None = None
        self._prober: asyncio.Task[None] | None = None
        self._closed = False
        self._wait = b""

    def replica_ack(self, ms: int) -> None:
        """As `ScriptCaller.replica_ack`: each commit and record followed by WAIT."""
        self._wait = hiredis.pack_command(("WAIT", 1, ms)) if ms else b""  # type: ignore[arg-type]

    def _kwargs(self) -> dict[str, Any]:
        # No redis-py retry (with its backoff) inside a connect: this layer retries.
        return {**self._pool_kwargs, "retry": self._no_retry}

    async def _get_wire(self) -> _Wire:
        loop = asyncio.get_running_loop()
        wire, pid = self._wire, process.pid
        if wire is not None and wire.pid == pid and wire.loop is not loop:
            if not wire.loop.is_closed():
                raise WrongEventLoop(
                    "this AsyncGate runs on another event loop: make one AsyncGate per loop"
                )
            wire = self._wire = None  # its loop is gone, and its socket with it
        if wire is not None and wire.pid != pid:
            wire = self._wire = None  # a forked child: the parent's socket stays the parent's
        if wire is not None and wire.error is None:
            return wire
        async with self._connect_lock():  # one connect at a time, however many tasks call
            wire = self._wire
            if wire is not None and wire.error is None and wire.loop is loop and wire.pid == pid:
                return wire
            self._wire = wire = await self._connect()
            return wire

    async def _connect(self) -> _Wire:
        conn = cast(redis.asyncio.Connection, self._connection_class(**self._kwargs()))
        await conn.connect()  # type: ignore[no-untyped-call]
        wire = _Wire(conn, self._decode, self._timeout)
        peer = wire.transport.get_extra_info("peername")
        last, self._peer = self._peer, peer
        if last is not None and last != peer and self.on_failover is not None:
            self.on_failover()  # Sentinel named a new primary (ScriptCaller._seen_peer)
        return wire

    def _connect_lock(self) -> asyncio.Lock:
        """This loop's lock on opening connections."""
        loop = asyncio.get_running_loop()
        if self._connecting is None or self._connecting_loop is not loop:
            self._connecting, self._connecting_loop = asyncio.Lock(), loop
        return self._connecting

    def _idle_acked(self) -> _Wire | None:
        """Drop the failed (or another loop's or process's) WAIT connections; one of the
        rest with nothing in flight."""
        loop, pid = asyncio.get_running_loop(), process.pid
        self._acked = [
            w for w in self._acked if w.error is None and w.pid == pid and w.loop is loop
        ]
        return next((w for w in self._acked if not w.pending), None)

    async def _acked_wire(self) -> _Wire:
        """A connection for a call followed by WAIT, which blocks its connection until a
        replica acknowledges (the whole wait if none does): one with nothing in flight,
        else a new one, as the sync gate has one a thread; past `ACKED_WIRES`, the
        least busy, shared. Opened one at a time, so the count holds in a burst."""
        wire = self._idle_acked()
        if wire is not None:
            return wire
        async with self._connect_lock():
            wire = self._idle_acked()  # freed or opened while this task waited
            if wire is not None:
                return wire
            if len(self._acked) >= ACKED_WIRES:
                return min(self._acked, key=lambda w: len(w.pending))
            wire = await self._connect()
            self._acked.append(wire)
            return wire

    async def command(self, *args: Any) -> Any:
        """One command (not through the breaker: for the gate's own housekeeping)."""
        wire = await self._get_wire()
        reply = await wire.send(hiredis.pack_command(args))
        if isinstance(reply, redis.exceptions.ResponseError):
            raise reply
        return reply

    def _gate(self) -> None:
        if not self.breaker.allow():
            self._probing()
            raise CircuitOpen("Redis circuit open: recent calls failed")

    async def __call__(self, op: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """FCALL ``op`` once: `call_many`'s rules, for one call, on the hot path's own
        path (no lists; the connection checked inline rather than by a coroutine)."""
        breaker = self.breaker
        if breaker.state != "closed":
            self._gate()
        name = self._library.functions[op]
        packed = hiredis.pack_command(("FCALL", name, len(keys), *keys, *args))
        wait = self._wait
        if wait and op not in WAITED:
            wait = b""
        for attempt in range(3):
            try:
                wire = self._wire
                if wait:
                    wire = await self._acked_wire()
                elif (
                    wire is None
                    or wire.error is not None
                    or wire.pid != process.pid
                    or wire.loop is not asyncio.get_running_loop()
                ):
                    wire = await self._get_wire()
                if wait:
                    replied, waited = wire.send(packed), wire.send(wait)
                    reply = await replied
                    acked = await waited
                else:
                    reply, acked = await wire.send(packed), 1
            except _WIRE_ERRORS as exc:
                self._failed(exc, attempt)
                continue
            if not acked and counted(reply):
                metrics.UNREPLICATED.inc()  # as ScriptCaller
                raise Unreplicated(reply)
            if not isinstance(reply, redis.exceptions.ResponseError):
                if breaker.failures or breaker.state != "closed":
                    breaker.success()
                return reply
            if is_missing(reply):
                await self._reload()
                continue
            if is_demoted(reply):  # not run: again, on a connection to the new primary
                demoted = redis.exceptions.ConnectionError(str(reply))
                wire.fail(demoted)
                self._failed(demoted, attempt)
                continue
            if is_unavailable(reply):
                self._failure()
            raise reply
        raise redis.exceptions.ResponseError(f"function library {self._library.name} not loaded")

    def _failed(self, exc: Exception, attempt: int) -> None:
        """A connection error is retried (twice); a timeout never: it may have run."""
        if isinstance(exc, redis.exceptions.TimeoutError) or attempt == 2:
            self._failure()
            if isinstance(exc, OSError):
                raise redis.exceptions.ConnectionError(str(exc)) from exc
            raise exc

    async def asking(self, op: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """FCALL ``op`` once after ASKING, written together: a Cluster slot being
        migrated to this node (quota/_acluster.py). The reply, an error reply as a
        value; a library the node lacks is loaded and the call sent again."""
        self._gate()
        name = self._library.functions[op]
        asking = hiredis.pack_command(("ASKING",))
        packed = hiredis.pack_command(("FCALL", name, len(keys), *keys, *args))
        reply: Any = None
        for _ in range(2):
            try:
                wire = await self._get_wire()
                first, second = wire.send(asking), wire.send(packed)
                await first
                reply = await second
            except _WIRE_ERRORS as exc:
                self._failed(exc, 2)
                raise
            if not is_missing(reply):
                return reply
            await self._reload()
        return reply

    async def load(self) -> None:
        """Load the function library on this server."""
        await self.command("FUNCTION", "LOAD", "REPLACE", self._library.source)

    async def _reload(self) -> None:
        if self.on_missing is not None:
            await self.on_missing()
        await self.command("FUNCTION", "LOAD", "REPLACE", self._library.source)

    async def call_many(
        self, op: str, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]
    ) -> list[Any]:
        """FCALL ``op`` once per ``(keys, args)``, written together; the replies in
        order (error replies as values). A missing library is loaded and the calls sent
        again; a connection error is retried on a new connection, twice; a timeout is
        never retried."""
        if self.breaker.state != "closed":
            self._gate()
        name = self._library.functions[op]
        packed = [hiredis.pack_command(("FCALL", name, len(k), *k, *a)) for k, a in calls]
        for attempt in range(3):
            try:
                wire = await self._get_wire()
                futures = [wire.send(p) for p in packed]
                replies = [await f for f in futures]
            except _WIRE_ERRORS as exc:
                self._failed(exc, attempt)
                continue
            errors = [r for r in replies if isinstance(r, redis.exceptions.ResponseError)]
            if any(is_missing(e) for e in errors):
                await self._reload()
                continue
            if any(is_unavailable(e) for e in errors):
                self._failure()
            elif self.breaker.failures or self.breaker.state != "closed":
                self.breaker.success()
            return replies
        raise redis.exceptions.ResponseError(f"function library {self._library.name} not loaded")

    def _failure(self) -> None:
        self.breaker.failure()
        if not self.breaker.allow():
            self._probing()

    def _probing(self) -> None:
        prober, loop = self._prober, asyncio.get_running_loop()
        if prober is not None and not prober.done() and prober.get_loop() is loop:
            return
        self._prober = loop.create_task(self._probe(), name="quota-probe")

    async def _probe(self) -> None:
        """Until the circuit closes: every ``reset_seconds``, PING over a new connection."""
        breaker = self.breaker
        while breaker.state != "closed" and not self._closed:
            await asyncio.sleep(breaker.probe_in())
            if not breaker.probe_due():
                continue
            conn = self._connection_class(**self._kwargs())
            try:
                async with asyncio.timeout(self._timeout):
                    await conn.connect()  # type: ignore[no-untyped-call]
                    await conn.send_command("PING")
                    pong = await conn.read_response()
            except (redis.exceptions.RedisError, OSError, TimeoutError):
                breaker.failure()
            else:
                if pong in ("PONG", b"PONG", True):
                    breaker.success()
                else:
                    breaker.failure()
            finally:
                await conn.disconnect()

    async def aclose(self) -> None:
        self._closed = True
        if self._prober is not None and not self._prober.done():
            self._prober.cancel()
        wires, self._wire, self._acked = [self._wire, *self._acked], None, []
        for wire in wires:
            if wire is not None and wire.pid == process.pid and not wire.loop.is_closed():
                wire.fail(redis.exceptions.ConnectionError("closed"))
