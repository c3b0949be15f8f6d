"""The gate's call path on Redis Cluster: `_calls.ScriptCaller` once per primary.

Every call's keys share one slot (quota/keys.py), so the slot of its first key, worked
out here (CRC16, as the server does), names the primary to send it to: one round trip,
no ``COMMAND GETKEYS``. The slot map (quota/_slots.py) is read again when a reply says
it changed:

- ``MOVED``: the map is read again and the call sent to the new owner;
- ``ASK`` (a slot being migrated): the call is sent once to the named node after
  ``ASKING``, in the same write;
- ``TRYAGAIN`` (a migration split the call's keys): sent again after a short sleep,
  for up to two seconds (quota/_slots.py `Redirects`);
- a connection error: raised at once (the caller decides by its outage policy), and a
  thread reads the map until every slot's primary answers (a replica took over).

Each primary has its own breaker, so one primary down fails only its own slots' calls,
and its own function library: loaded when the primary is first seen, and by the node's
caller on ``Function not found`` (a restarted node, a new primary).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import hiredis
import redis

from quota._calls import ScriptCaller
from quota._slots import Redirects, SlotMap, redirect, slot_of
from quota.breaker import Breaker
from quota.scripts import Library, is_missing

#: After a failed connection: read the map this often, for at most this long.
WATCH_SECONDS, WATCH_FOR_SECONDS = 0.25, 120.0


def failed_over(before: Sequence[Any], after: Sequence[Any]) -> set[int]:
    """The slots whose primary changed from one whose breaker ever opened (it failed: a
    replica took over, or it came back and serves stale state until it hears of that),
    as opposed to a slot migrated off a primary that never failed."""
    return {
        slot
        for slot, (old, new) in enumerate(zip(before, after, strict=False))
        if old is not None and old is not new and old.breaker.has_opened
    }


class _NodeCaller(Protocol):
    breaker: Breaker

    def replica_ack(self, ms: int) -> None: ...


C = TypeVar("C", bound=_NodeCaller)


class Primaries(Generic[C]):
    """What both cluster transports keep per primary: its caller (sync or asyncio), by
    "host:port", and the table of each slot's caller."""

    slots: SlotMap
    _callers: dict[str, C]
    _table: list[C | None]
    _ack_ms: int

    @property
    def breakers(self) -> dict[str, Breaker]:
        """Each primary's breaker, by "host:port"."""
        return {name: c.breaker for name, c in self._callers.items()}

    def replica_ack(self, ms: int) -> None:
        """Every primary's commits and records followed by ``WAIT 1 <ms>``."""
        self._ack_ms = ms
        for caller in list(self._callers.values()):
            caller.replica_ack(ms)

    def owner(self, key: str) -> str:
        """The "host:port" of the primary that owns ``key``'s slot, as last read."""
        return self.slots.owners[slot_of(key)]

    def _all_serving(self) -> bool:
        """Whether every primary that serves a slot answers (its breaker is closed)."""
        serving = {id(c): c for c in self._table if c is not None}.values()
        return bool(serving) and all(c.breaker.state == "closed" for c in serving)


class ClusterCaller(Primaries[ScriptCaller]):
    """`ScriptCaller`'s interface over every primary of a cluster."""

    def __init__(
        self,
        slots: SlotMap,
        library: Library,
        node_client: Callable[[str], redis.Redis],
        new_breaker: Callable[[], Breaker],
    ) -> None:
        self.slots = slots
        self._library = library
        self._node_client = node_client
        self._new_breaker = new_breaker
        #: Called when a node lacks the function library (it lost its data, or is new).
        self.on_missing: Callable[[], None] | None = None
        #: Called with the slots a failed primary's replica took over: writes the old
        #: primary acknowledged may not have reached it.
        self.on_failover: Callable[[set[int]], None] | None = None
        #: Redirects followed, by kind (MOVED, ASK, TRYAGAIN): how often the map was stale.
        self.redirected: Counter[str] = Counter()
        self._callers: dict[str, ScriptCaller] = {}
        self._table: list[ScriptCaller | None] = []
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._ack_ms = 0
        self._closed = threading.Event()
        self.refresh()

    @property
    def open_connections(self) -> int:
        return sum(c.open_connections for c in self._callers.values())

    def refresh(self, seen: int | None = None) -> None:
        """Read the slot map again (unless another thread did since ``seen``); a primary
        new to this caller gets its caller, and the function library."""
        if seen is None or seen == self.slots.version:
            self.slots.read(seen)
        with self._lock:
            before = self._table
            self._table = [self._caller(name) if name else None for name in self.slots.owners]
        taken = failed_over(before, self._table)
        if taken and self.on_failover is not None:
            self.on_failover(taken)

    def _caller(self, name: str) -> ScriptCaller:
        caller = self._callers.get(name)
        if caller is None:
            caller = ScriptCaller(self._node_client(name), self._library, self._new_breaker())
            caller.on_missing = self._missing
            caller.replica_ack(self._ack_ms)
            self._callers[name] = caller
            with contextlib.suppress(redis.exceptions.RedisError):
                caller.load()  # if down now, its caller loads it when it answers
        return caller

    def _missing(self) -> None:
        if self.on_missing is not None:
            self.on_missing()

    def _node(self, name: str) -> ScriptCaller:
        """The caller of a node a redirect named (one new to the map reads it again)."""
        if name not in self._callers:
            self.refresh()
        with self._lock:
            return self._caller(name)

    def _watch(self) -> None:
        """A primary failed: read the slot map every `WATCH_SECONDS`, off the callers'
        threads, until every slot's primary answers (a replica took over, or the node
        came back) or `WATCH_FOR_SECONDS` pass."""
        with self._lock:
            if self._watcher is not None and self._watcher.is_alive():
                return
            self._watcher = threading.Thread(target=self._rewatch, name="quota-slots", daemon=True)
            self._watcher.start()

    def _rewatch(self) -> None:
        deadline = time.monotonic() + WATCH_FOR_SECONDS
        while not self._closed.wait(WATCH_SECONDS) and time.monotonic() < deadline:
            self.refresh()
            if self._all_serving():
                return

    def _slot_caller(self, slot: int, version: int) -> ScriptCaller:
        caller = self._table[slot]
        if caller is None:  # no primary serves it (a failover under way), or never read
            self.refresh(version)
            caller = self._table[slot]
            if caller is None:
                self._watch()
                raise redis.exceptions.ConnectionError(f"no cluster node serves slot {slot}")
        return caller

    def __call__(self, op: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        slot = slot_of(keys[0])
        redirects: Redirects | None = None  # made on the first redirect only
        while True:
            version = self.slots.version
            caller = self._table[slot] or self._slot_caller(slot, version)
            try:
                return caller(op, keys, args)
            except redis.exceptions.ConnectionError:
                self._watch()  # a failover? the caller decides by its outage policy meanwhile
                raise
            except redis.exceptions.ResponseError as exc:
                moved = redirect(exc)
                if moved is None:
                    raise
                kind, _, node = moved
            self.redirected[kind] += 1
            if kind == "ASK":
                reply = self._node(node).asking(op, keys, args)
                again = redirect(reply)
                if again is None:
                    if isinstance(reply, redis.exceptions.ResponseError):
                        raise reply
                    return reply
                kind = again[0]
            redirects = redirects or Redirects()
            time.sleep(redirects.pause(kind))
            if kind == "MOVED":
                self.refresh(version)

    def call_each(
        self,
        op: str,
        calls: Callable[[], Iterable[tuple[Sequence[Any], Sequence[Any]]]],
        handle: Callable[[int, Any], None],
    ) -> None:
        """`ScriptCaller.call_each` across primaries: the calls grouped by the node that
        owns their slot, every group written before any reply is read (one round trip
        for all of them), each reply handed to ``handle`` with its place in ``calls``.
        Only for calls that may run twice: a redirect sends the whole batch again."""
        name = self._library.functions[op]
        redirects = Redirects()
        while True:
            version = self.slots.version
            groups: dict[int, tuple[ScriptCaller, list[int], list[bytes]]] = {}
            for n, (keys, args) in enumerate(calls()):
                caller = self._slot_caller(slot_of(keys[0]), version)
                group = groups.setdefault(id(caller), (caller, [], []))
                group[1].append(n)
                group[2].append(hiredis.pack_command(("FCALL", name, len(keys), *keys, *args)))
            try:
                if self._send_groups(list(groups.values()), handle):
                    return
                continue  # a node lacked the library, now loaded: every group again
            except redis.exceptions.ConnectionError:
                self._watch()
                raise
            except redis.exceptions.ResponseError as exc:
                moved = redirect(exc)
                if moved is None:
                    raise
            self.redirected[moved[0]] += 1
            if moved[0] != "MOVED":  # a slot in migration: one by one (ASKING)
                for n, (keys, args) in enumerate(calls()):
                    handle(n, self(op, keys, args))
                return
            time.sleep(redirects.pause("MOVED"))
            self.refresh(version)

    @staticmethod
    def _send_groups(
        groups: list[tuple[ScriptCaller, list[int], list[bytes]]],
        handle: Callable[[int, Any], None],
    ) -> bool:
        """Write every group, then read each; False if a node lacked the library."""
        written = []
        try:
            for caller, _, packed in groups:
                written.append(caller.write_batch(packed))
        except BaseException:
            for (caller, _, _), _wire in zip(groups, written, strict=False):
                caller.discard()  # their replies stay unread
            raise
        error: redis.exceptions.ResponseError | None = None
        missing = False
        for i, ((caller, places, _), wire) in enumerate(zip(groups, written, strict=True)):

            def at(n: int, reply: Any, places: list[int] = places) -> None:
                handle(places[n], reply)

            try:
                caller.read_batch(wire, len(places), at)
            except redis.exceptions.ResponseError as exc:
                if is_missing(exc):
                    missing = True
                else:
                    error = error or exc
            except BaseException:
                for later, _, _ in groups[i + 1 :]:
                    later.discard()  # their replies stay unread
                raise
        if error is not None:
            raise error
        return not missing

    def load(self) -> None:
        """Load the function library on every primary."""
        for caller in list(self._callers.values()):
            caller.load()

    def close(self) -> None:
        self._closed.set()
        for caller in list(self._callers.values()):
            caller.close()
