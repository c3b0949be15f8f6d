"""The gate's call path to Redis: FCALL on a connection owned by the calling thread.

redis-py's command layer (pool checkout and return, retry wrapper, observability
hooks, per-argument type checks before packing) costs about as much client time per
call as the network round trip itself on a small machine (docs/BENCHMARKS.md). The
hot path needs none of it: each thread keeps one connection of the client's kind,
packs the FCALL with hiredis and reads the reply. Connections are redis-py's own;
only the layer above is skipped.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import hiredis
import redis
from redis.connection import ConnectionInterface

from quota.scripts import Library, is_missing


class ScriptCaller:
    def __init__(self, client: redis.Redis, library: Library) -> None:
        self._client = client
        self._library = library
        self._pool = client.connection_pool
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[ConnectionInterface] = []

    def _connection(self) -> ConnectionInterface:
        local = self._local
        conn: ConnectionInterface | None = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():  # a forked child opens its own
            conn = self._pool.make_connection()
            local.conn, local.pid = conn, os.getpid()
            with self._lock:
                self._all.append(conn)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.disconnect()
            self._local.conn = None

    def __call__(self, op: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """FCALL ``op`` once and return its reply (see `call_each` for the rules)."""
        replies: list[Any] = []
        self.call_each(op, lambda: ((keys, args),), lambda _, reply: replies.append(reply))
        return replies[0]

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
        read-only operations."""
        name = self._library.functions[op]
        for attempt in range(3):
            conn = self._connection()
            try:
                sent = 0
                for keys, args in calls():
                    conn.send_packed_command(  # type: ignore[no-untyped-call]
                        [hiredis.pack_command(("FCALL", name, len(keys), *keys, *args))],
                        check_health=False,
                    )
                    sent += 1
                missing = False
                for n in range(sent):
                    try:
                        reply = conn.read_response()
                    except redis.exceptions.ResponseError as exc:
                        if not is_missing(exc):
                            self._drop()  # unread replies would answer the next call
                            raise
                        missing = True  # keep reading: every reply must be consumed
                        continue
                    if not missing:
                        try:
                            handle(n, reply)
                        except BaseException:
                            self._drop()
                            raise
                if not missing:
                    return
                self._library.load(self._client)
            except redis.exceptions.TimeoutError:
                self._drop()
                raise
            except redis.exceptions.ConnectionError:
                self._drop()
                if attempt == 2:
                    raise
        raise redis.exceptions.ResponseError(f"function library {self._library.name} not loaded")

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.disconnect()  # type: ignore[no-untyped-call]
            self._all.clear()
