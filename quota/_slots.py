"""A Redis Cluster's slot map, as the gate's transports need it: which primary
("host:port") serves each of the 16,384 slots. Read with ``CLUSTER SLOTS`` from any
node that answers (the URL's seeds, then every node seen since), so that a gate can be
made, and keeps deciding by its outage policy, while nodes are down. Also the pure
reading of the replies that redirect a call (``MOVED``, ``ASK``, ``TRYAGAIN``).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from quota.topology import ClusterUrl

SLOTS = 16384
#: MOVED and ASK followed per call before giving up.
REDIRECTS = 5
#: A MOVED again after the map was read again: the nodes read have not all heard of a
#: failover yet (gossip). Waited before the 2nd, 3rd... try (0.3 s in all), not 0.
MOVED_AGAIN_SECONDS = (0.0, 0.02, 0.04, 0.08, 0.16)
#: A migration splitting a call's keys (TRYAGAIN): tried again this often, this long.
TRYAGAIN_SECONDS, TRYAGAIN_FOR_SECONDS = 0.01, 2.0


def slot_of(key: str | bytes) -> int:
    """The key's slot, as the server works it out (CRC16 of its hash tag)."""
    return int(key_slot(key.encode() if isinstance(key, str) else key))


def redirect(reply: object) -> tuple[str, int, str] | None:
    """``("MOVED"|"ASK", slot, "host:port")`` of a redirect reply, ``("TRYAGAIN", -1,
    "")`` for a slot whose keys a migration split; None for any other reply."""
    if not isinstance(reply, redis.exceptions.ResponseError):
        return None
    text = str(reply)
    if text.startswith(("MOVED ", "ASK ")):
        kind, slot, node = text.split(" ", 2)
        return kind, int(slot), node
    if text.startswith("TRYAGAIN"):
        return "TRYAGAIN", -1, ""
    return None


class Redirects:
    """How long one call follows redirects: `REDIRECTS` MOVED or ASK (each MOVED
    after its `MOVED_AGAIN_SECONDS`), and TRYAGAIN (keys of one slot split by a
    migration, until the last of them moves) for up to `TRYAGAIN_FOR_SECONDS`."""

    __slots__ = ("moves", "until")

    def __init__(self) -> None:
        self.moves = 0
        self.until = 0.0

    def pause(self, kind: str) -> float:
        """The seconds to wait before the next try; raises `ClusterError` when spent."""
        if kind == "TRYAGAIN":
            now = time.monotonic()
            self.until = self.until or now + TRYAGAIN_FOR_SECONDS
            if now >= self.until:
                raise redis.exceptions.ClusterError(
                    f"a slot's keys stayed split by a migration for {TRYAGAIN_FOR_SECONDS:g} s"
                )
            return TRYAGAIN_SECONDS
        self.moves += 1
        if self.moves > REDIRECTS:
            raise redis.exceptions.ClusterError(f"still redirected after {REDIRECTS} tries")
        return MOVED_AGAIN_SECONDS[self.moves - 1] if kind == "MOVED" else 0.0


class SlotMap:
    """Each slot's primary, and how to reach a node. Thread-safe; `read` blocks (the
    async transport runs it in a thread)."""

    def __init__(self, url: ClusterUrl, timeout: float) -> None:
        self.url = url
        self._timeout = timeout
        self.owners: list[str] = [""] * SLOTS  # "" until read: no primary known
        self.version = 0
        self._known: list[tuple[str, int]] = list(url.seeds)
        self._lock = threading.Lock()

    def read(self, seen: int | None = None) -> bool:
        """Read the map again, unless another thread did since version ``seen``; False
        if no node answered (the map is left as it was)."""
        with self._lock:
            if seen is not None and seen != self.version:
                return True
            for host, port in self._known:
                try:
                    slots = self._slots(host, port)
                except redis.exceptions.RedisError:
                    continue
                self._take(slots, host)
                return True
            return False

    def _slots(self, host: str, port: int) -> list[Any]:
        client = redis.Redis.from_url(
            self.url.node_url(host, port),
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        with client:
            slots: list[Any] = client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
        return slots

    def _take(self, slots: list[Any], asked: str) -> None:
        owners = [""] * SLOTS
        known: dict[tuple[str, int], None] = {}
        for start, end, primary, *replicas in slots:
            host = primary[0] or asked  # a node that does not know its address says ""
            owners[int(start) : int(end) + 1] = [f"{host}:{primary[1]}"] * (
                int(end) - int(start) + 1
            )
            known[(host, int(primary[1]))] = None
            for replica in replicas:
                known[(replica[0] or asked, int(replica[1]))] = None
        for seed in self.url.seeds:  # kept, in case every node seen moves away
            known[seed] = None
        self.owners, self._known = owners, list(known)
        self.version += 1

    def primaries(self) -> list[str]:
        """Every primary that serves a slot, as last read."""
        return sorted({o for o in self.owners if o})

    def node_url(self, name: str) -> str:
        host, _, port = name.rpartition(":")
        return self.url.node_url(host, int(port))
