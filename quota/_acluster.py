"""The asyncio twin of _cluster.py: an `AsyncGate`'s calls on Redis Cluster, one
`_acalls.AsyncScriptCaller` (one pipelined connection) per primary.

The same rules as the sync transport: the slot of a call's first key names its
primary; ``MOVED`` reads the map again (quota/_slots.py, in a thread: it blocks),
``ASK`` sends the call once after ``ASKING``, ``TRYAGAIN`` waits a little; a failed
connection is raised at once and a task reads the map until every slot's primary
answers. `call_many` sends each primary's share at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis
import redis.asyncio

from quota._acalls import AsyncScriptCaller
from quota._cluster import WATCH_FOR_SECONDS, WATCH_SECONDS, Primaries, failed_over
from quota._slots import Redirects, SlotMap, redirect, slot_of
from quota.breaker import Breaker
from quota.scripts import Library


class AsyncClusterCaller(Primaries[AsyncScriptCaller]):
    """`AsyncScriptCaller`'s interface over every primary of a cluster."""

    def __init__(
        self,
        slots: SlotMap,
        library: Library,
        node_client: Callable[[str], redis.asyncio.Redis],
        new_breaker: Callable[[], Breaker],
    ) -> None:
        self.slots = slots
        self._library = library
        self._node_client = node_client
        self._new_breaker = new_breaker
        #: Awaited when a node lacks the function library.
        self.on_missing: Callable[[], Awaitable[None]] | None = None
        #: As `ClusterCaller.on_failover`.
        self.on_failover: Callable[[set[int]], None] | None = None
        #: Redirects followed, by kind (MOVED, ASK, TRYAGAIN): how often the map was stale.
        self.redirected: Counter[str] = Counter()
        self._callers: dict[str, AsyncScriptCaller] = {}
        self._table: list[AsyncScriptCaller | None] = []
        self._built = -1  # the map version the table was built from
        self._watcher: asyncio.Task[None] | None = None
        self._ack_ms = 0
        self._closed = False

    async def refresh(self, seen: int | None = None) -> None:
        """Read the map again (in a thread) unless it changed since ``seen``; load the
        function library on primaries new to this caller."""
        if seen is None or seen == self.slots.version:
            await asyncio.to_thread(self.slots.read, seen)
        await self._build()

    async def _build(self) -> None:
        version = self.slots.version
        if version == self._built:
            return
        new: list[AsyncScriptCaller] = []
        table: list[AsyncScriptCaller | None] = []
        for name in self.slots.owners:
            caller = self._callers.get(name) if name else None
            if name and caller is None:
                caller = AsyncScriptCaller(
                    self._node_client(name), self._library, self._new_breaker()
                )
                caller.on_missing = self._missing
                caller.replica_ack(self._ack_ms)
                self._callers[name] = caller
                new.append(caller)
            table.append(caller)
        before, self._table, self._built = self._table, table, version
        taken = failed_over(before, table)
        if taken and self.on_failover is not None:
            self.on_failover(taken)
        for caller in new:
            with contextlib.suppress(redis.exceptions.RedisError, OSError):
                await caller.load()  # if down now, its caller loads it when it answers

    async def _missing(self) -> None:
        if self.on_missing is not None:
            await self.on_missing()

    async def _caller(self, slot: int) -> AsyncScriptCaller:
        if self._built != self.slots.version:
            await self._build()
        caller = self._table[slot] if self._table else None
        if caller is None:
            await self.refresh(self.slots.version)
            caller = self._table[slot]
            if caller is None:
                self._watch()
                raise redis.exceptions.ConnectionError(f"no cluster node serves slot {slot}")
        return caller

    async def _node(self, name: str) -> AsyncScriptCaller:
        if name not in self._callers:
            await self.refresh()
        caller = self._callers.get(name)
        if caller is None:
            raise redis.exceptions.ConnectionError(f"cluster node {name} is not in the map")
        return caller

    def _watch(self) -> None:
        watcher = self._watcher
        if watcher is not None and not watcher.done():
            return
        self._watcher = asyncio.get_running_loop().create_task(self._rewatch(), name="quota-slots")

    async def _rewatch(self) -> None:
        deadline = time.monotonic() + WATCH_FOR_SECONDS
        while not self._closed and time.monotonic() < deadline:
            await asyncio.sleep(WATCH_SECONDS)
            await self.refresh()
            if self._all_serving():
                return

    async def __call__(self, op: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        slot = slot_of(keys[0])
        redirects: Redirects | None = None  # made on the first redirect only
        while True:
            version = self.slots.version
            table = self._table
            caller = table[slot] if table and self._built == version else None
            if caller is None:
                caller = await self._caller(slot)
            try:
                return await caller(op, keys, args)
            except redis.exceptions.ConnectionError:
                self._watch()
                raise
            except redis.exceptions.ResponseError as exc:
                moved = redirect(exc)
                if moved is None:
                    raise
                kind, _, node = moved
            self.redirected[kind] += 1
            if kind == "ASK":
                reply = await (await self._node(node)).asking(op, keys, args)
                again = redirect(reply)
                if again is None:
                    if isinstance(reply, redis.exceptions.ResponseError):
                        raise reply
                    return reply
                kind = again[0]
            redirects = redirects or Redirects()
            await asyncio.sleep(redirects.pause(kind))
            if kind == "MOVED":
                await self.refresh(version)

    async def command(self, *args: Any) -> Any:
        """One single-key command (``args[1]`` is its key), on the key's primary."""
        slot = slot_of(args[1])
        redirects = Redirects()
        while True:
            version = self.slots.version
            caller = await self._caller(slot)
            try:
                return await caller.command(*args)
            except redis.exceptions.ResponseError as exc:
                moved = redirect(exc)
                if moved is None:
                    raise
            await asyncio.sleep(redirects.pause(moved[0]))
            await self.refresh(version)

    async def call_many(
        self, op: str, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]
    ) -> list[Any]:
        """`AsyncScriptCaller.call_many` across primaries: each primary's calls sent to
        it at the same time as the others'; the replies in the order of ``calls``, a
        redirect reply read again from the slot's owner (only for calls that may run
        twice)."""
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        redirects = Redirects()
        while True:
            version = self.slots.version
            groups: dict[int, tuple[AsyncScriptCaller, list[int]]] = {}
            for i in todo:
                caller = await self._caller(slot_of(calls[i][0][0]))
                groups.setdefault(id(caller), (caller, []))[1].append(i)
            try:
                answers = await asyncio.gather(
                    *(c.call_many(op, [calls[i] for i in places]) for c, places in groups.values())
                )
            except redis.exceptions.ConnectionError:
                self._watch()
                raise
            todo, moved = [], False
            for (_, places), got in zip(groups.values(), answers, strict=True):
                for i, reply in zip(places, got, strict=True):
                    replies[i] = reply
                    kind = redirect(reply)
                    if kind is not None:
                        self.redirected[kind[0]] += 1
                    if kind is not None and kind[0] == "MOVED":
                        todo.append(i)
                        moved = True
                    elif kind is not None:  # a slot in migration: one by one
                        replies[i] = await self._one(op, calls[i])
            if not todo:
                return replies
            await asyncio.sleep(redirects.pause("MOVED"))
            if moved:
                await self.refresh(version)

    async def _one(self, op: str, call: tuple[Sequence[Any], Sequence[Any]]) -> Any:
        """One call of a batch by the single call's rules; an error reply as a value."""
        try:
            return await self(op, call[0], call[1])
        except redis.exceptions.ResponseError as exc:
            return exc

    async def aclose(self) -> None:
        self._closed = True
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
        for caller in list(self._callers.values()):
            await caller.aclose()
