"""Draining the shards' usage streams into the Postgres ledger.

Per batch: take over entries a crashed consumer left pending (XAUTOCLAIM), read new
ones (XREADGROUP), COPY them into a staging table and insert what is new with its
rollups, COMMIT, then XACK, then trim what every consumer has acknowledged. A crash
anywhere loses nothing (unacknowledged entries are redelivered) and duplicates
nothing (the ledger's unique key drops a redelivered event, and rollups are computed
from the rows actually inserted).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import redis
from sqlalchemy import Engine

from quota._backend import database_errors, redis_errors
from quota.keys import KeyLayout
from quota.ledger import StagedEvent, write_events
from quota.scripts import Scripts
from quota.settings import Settings

log = logging.getLogger("quota.drain")

GROUP = "ledger"
Entry = tuple[str, dict[str, str]]


def stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def parse_entry(entry_id: str, fields: dict[str, str]) -> StagedEvent:
    """A stream entry as written by record.lua / commit.lua; KeyError/ValueError if not."""
    ms, seq = stream_id(entry_id)
    return StagedEvent(
        event_id=fields["id"],
        at_ms=int(fields["at"]),
        port_id=fields["port"],
        user_id=fields["user"] or None,
        feature=fields["feature"],
        provider=fields["provider"],
        model=fields["model"],
        input_tokens=int(fields["in"]),
        output_tokens=int(fields["out"]),
        request_id=fields["req"] or None,
        source="stream",
        stream_ms=ms,
        stream_seq=seq,
    )


@dataclass
class DrainStats:
    shard: int
    read: int = 0
    claimed: int = 0
    inserted: int = 0
    rejected: int = 0
    trimmed: int = 0
    batches: int = 0
    seconds: float = 0.0

    def add(self, other: DrainStats) -> None:
        for name in ("read", "claimed", "inserted", "rejected", "trimmed", "batches"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.seconds += other.seconds


@dataclass(frozen=True)
class ShardLag:
    shard: int
    length: int  # entries in the stream (drained but not yet trimmed included)
    pending: int  # delivered to a consumer, not yet acknowledged
    undelivered: int  # not yet read by any consumer
    oldest_undrained_age_s: float | None  # None when nothing waits


def _entries(reply: Any) -> list[Entry]:
    # An entry deleted while pending comes back with no fields: nothing to store.
    return [(str(i), dict(f)) for i, f in reply or [] if f]


def _read_reply_entries(reply: Any) -> list[Entry]:
    """XREADGROUP of one stream: a list [[key, entries]] (RESP2) or {key: [entries]} (RESP3)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return _entries(next(iter(reply.values()))[0])
    return _entries(reply[0][1])


class Drainer:
    """Moves usage events from the shard streams into Postgres. One per process."""

    def __init__(
        self, settings: Settings, client: redis.Redis, engine: Engine, consumer: str | None = None
    ) -> None:
        self.settings = settings
        self.redis = client
        self.engine = engine
        self.layout = KeyLayout(settings.key_prefix, settings.shards)
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}"
        self._scripts = Scripts.register(client)
        self._groups: set[int] = set()

    def ensure_group(self, shard: int) -> None:
        """Create the consumer group (and the stream) if missing; read from the start."""
        try:
            self.redis.xgroup_create(self.layout.stream(shard), GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(shard)

    def drain_shard(
        self, shard: int, *, max_seconds: float = 1.0, claim_idle_ms: int | None = None
    ) -> DrainStats:
        """Drain batches from one shard until it is empty or ``max_seconds`` have passed."""
        stats = DrainStats(shard)
        start = time.monotonic()
        while True:
            batch = self._one_batch(shard, claim_idle_ms)
            stats.add(batch)
            if batch.read + batch.claimed == 0 or time.monotonic() - start >= max_seconds:
                break
        stats.seconds = time.monotonic() - start
        return stats

    def _one_batch(self, shard: int, claim_idle_ms: int | None) -> DrainStats:
        key = self.layout.stream(shard)
        stats = DrainStats(shard, batches=1)
        count = self.settings.drain_batch
        idle = self.settings.drain_claim_idle_ms if claim_idle_ms is None else claim_idle_ms
        with redis_errors():
            if shard not in self._groups:
                self.ensure_group(shard)
            try:
                # Our own unacknowledged entries first (a failed COMMIT, say): they
                # would otherwise wait for the idle time like a dead consumer's.
                own = _read_reply_entries(
                    self.redis.xreadgroup(GROUP, self.consumer, {key: "0"}, count=count)
                )
                if own:
                    claimed, fresh = own, None
                else:
                    claimed = _entries(
                        self.redis.xautoclaim(key, GROUP, self.consumer, idle, "0-0", count=count)[
                            1
                        ]
                    )
                    fresh = self.redis.xreadgroup(GROUP, self.consumer, {key: ">"}, count=count)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._groups.discard(shard)  # the stream was lost (FLUSHALL): start again
                return stats
        entries: list[Entry] = claimed + _read_reply_entries(fresh)
        stats.claimed, stats.read = len(claimed), len(entries) - len(claimed)
        if not entries:
            return stats
        events, rejected = self._parse(entries)
        stats.rejected = len(rejected)
        stats.inserted = self._store(events)
        with redis_errors():
            self.redis.xack(key, GROUP, *(entry_id for entry_id, _ in entries))
            stats.trimmed = int(self._scripts.trim([key], [GROUP]))
        return stats

    @staticmethod
    def _parse(entries: Sequence[Entry]) -> tuple[list[StagedEvent], list[Entry]]:
        events, rejected = [], []
        for entry_id, fields in entries:
            try:
                events.append(parse_entry(entry_id, fields))
            except (KeyError, ValueError, TypeError):
                rejected.append((entry_id, fields))
        for entry_id, fields in rejected:
            # Not an event this code wrote; keeping it would block the stream forever.
            log.error("dropping malformed stream entry %s: %r", entry_id, fields)
        return events, rejected

    def _store(self, events: Sequence[StagedEvent]) -> int:
        with database_errors(), self.engine.begin() as conn:
            driver: Any = conn.connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            return write_events(driver, events)

    def shard_lag(self, shard: int) -> ShardLag:
        key = self.layout.stream(shard)
        with redis_errors():
            length = int(self.redis.xlen(key))
            groups: list[dict[str, Any]] = self.redis.xinfo_groups(key) if length else []
            group = next((g for g in groups if g["name"] == GROUP), None)
            if group is None:  # nothing drained yet: every entry waits
                first = _entries(self.redis.xrange(key, count=1)) if length else []
                age = self._age(first[0][0]) if first else None
                return ShardLag(shard, length, 0, length, age)
            pending, last = int(group["pending"]), str(group["last-delivered-id"])
            undelivered = int(group.get("lag") or 0)
            oldest: str | None = None
            if pending:
                oldest = str(self.redis.xpending(key, GROUP)["min"])
            elif undelivered:
                after = _entries(self.redis.xrange(key, min=f"({last}", count=1))
                oldest = after[0][0] if after else None
            age = self._age(oldest) if oldest else None
        return ShardLag(shard, length, pending, undelivered, age)

    def _age(self, entry_id: str) -> float:
        sec, usec = self.redis.time()
        return max(0.0, (sec * 1000 + usec // 1000 - stream_id(entry_id)[0]) / 1000)

    def lag(self) -> list[ShardLag]:
        return [self.shard_lag(s) for s in range(self.settings.shards)]
