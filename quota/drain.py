"""Draining the shards' usage streams into the Postgres ledger.

Per batch: take over entries a crashed consumer left pending (XAUTOCLAIM), read new
ones (XREADGROUP), COPY them into a staging table and insert what is new with its
rollups, COMMIT, then XACK, then trim what every consumer has acknowledged. A crash
anywhere loses nothing (unacknowledged entries are redelivered) and duplicates
nothing (the ledger's unique key drops a redelivered event, and rollups are computed
from the rows actually inserted).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis
from redis.cluster import RedisCluster
from sqlalchemy import Engine

from quota import metrics
from quota._backend import database_errors, redis_errors
from quota._calls import ScriptCaller
from quota._cluster import ClusterCaller
from quota._slots import SlotMap
from quota.breaker import Breaker
from quota.entries import staging_line_of, stream_id
from quota.keys import KeyLayout
from quota.ledger import write_lines
from quota.scripts import library
from quota.settings import Settings
from quota.topology import Client, node_of, parse_cluster_url, primaries

log = logging.getLogger("quota.drain")

GROUP = "ledger"
#: What a Cluster node's own client keeps of the cluster client's options (credentials
#: and TLS come with the node's URL).
_NODE_OPTIONS = ("socket_timeout", "socket_connect_timeout", "decode_responses")
#: A stream entry as the drain reads it: id and the flat [field, value, ...] list.
Entry = tuple[str, list[str]]


def drain_group(group: int, shards: int, jobs: int) -> range:
    """The shards drain job ``group`` of ``jobs`` reads: every shard s with
    s mod jobs == group (more jobs than shards: one shard each, the rest none)."""
    return range(group, shards, min(jobs, shards)) if group < min(jobs, shards) else range(0)


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
    #: The consumer group had to be created: a new deployment, or Redis lost the shard
    #: (restart without persistence, flush), so its counters need reconciling.
    group_created: bool = False

    def add(self, other: DrainStats) -> None:
        for name in ("read", "claimed", "inserted", "rejected", "trimmed", "batches"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.seconds += other.seconds
        self.group_created = self.group_created or other.group_created


@dataclass
class _Batch:
    """A batch's events as staging lines (for one COPY), the span of their times, and
    the entries that are not events."""

    lines: list[str] = field(default_factory=list)
    first_ms: int = 2**63
    last_ms: int = -1
    rejected: list[Entry] = field(default_factory=list)


@dataclass(frozen=True)
class ShardLag:
    shard: int
    length: int  # entries in the stream (drained but not yet trimmed included)
    pending: int  # delivered to a consumer, not yet acknowledged
    undelivered: int  # not yet read by any consumer
    oldest_undrained_age_s: float | None  # None when nothing waits


def _entries(reply: Any) -> list[Entry]:
    # An entry deleted while pending comes back with no fields: nothing to store.
    return [(i, f) for i, f in reply or [] if f]


def _read_reply_entries(reply: Any) -> list[Entry]:
    """Raw XREADGROUP of one stream: [[key, entries]] (RESP2) or {key: entries} (RESP3)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return _entries(next(iter(reply.values())))
    return _entries(reply[0][1])


def _unparsed(resp: Any, **_: Any) -> Any:
    return resp


class Drainer:
    """Moves usage events from the shard streams into Postgres. One per process."""

    def __init__(
        self, settings: Settings, client: Client, engine: Engine, consumer: str | None = None
    ) -> None:
        self.settings = settings
        self.redis = client
        self._raws: dict[int, redis.Redis] = {}
        self.engine = engine
        self.layout = KeyLayout(settings.key_prefix, settings.shards)
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}"

        # FCALLs (trim) through the gate's transport: the library reloaded if missing.
        def breaker() -> Breaker:
            return Breaker(settings.breaker_failures, settings.breaker_reset_seconds)

        self.fcall: ScriptCaller | ClusterCaller
        if isinstance(client, RedisCluster):
            slots = SlotMap(parse_cluster_url(settings.redis_url), settings.redis_timeout)
            given = primaries(client)[0].get_connection_kwargs()
            kwargs = {k: given[k] for k in _NODE_OPTIONS if k in given}
            self.fcall = ClusterCaller(
                slots,
                library(),
                lambda name: redis.Redis.from_url(slots.node_url(name), **kwargs),
                breaker,
            )
        else:
            self.fcall = ScriptCaller(client, library(), breaker())
        self._groups: set[int] = set()
        # One writer: batches reach Postgres in the order they were read.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quota-drain-pg")

    def _raw(self, key: str) -> redis.Redis:
        """A client on the pool of the server that holds ``key`` (on a Cluster, the
        primary that owns the shard), returning stream replies unparsed: redis-py's
        per-entry dicts cost more than the rest of the drain's client work together."""
        node = node_of(self.redis, key)
        pool = node.connection_pool
        raw = self._raws.get(id(pool))
        if raw is None:
            raw = self._raws[id(pool)] = redis.Redis(connection_pool=pool)
            for command in ("XREADGROUP", "XAUTOCLAIM", "XRANGE"):
                raw.set_response_callback(command, _unparsed)
        return raw

    def _moved(self) -> None:
        """A call failed: on a Cluster, read the slot map again (a failover may have
        moved the shard), so that the next run reads from the new primary."""
        if isinstance(self.redis, RedisCluster):
            self._raws.clear()
            with contextlib.suppress(redis.exceptions.RedisError):
                self.redis.nodes_manager.initialize()

    def ensure_group(self, shard: int) -> bool:
        """Create the consumer group (and the stream) if missing; read from the start.
        True if it was created now."""
        created = True
        try:
            self.redis.xgroup_create(self.layout.stream(shard), GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            created = False
        self._groups.add(shard)
        return created

    def drain_shard(
        self, shard: int, *, max_seconds: float = 1.0, claim_idle_ms: int | None = None
    ) -> DrainStats:
        """Drain batches from one shard until it is empty or ``max_seconds`` have passed.

        While Postgres stores one batch (on the writer thread), the next is read and
        parsed, and the one before is acknowledged: a batch is acknowledged only after
        its COMMIT, and sent to the writer only after the batch before it committed. If
        a store fails, the batches read stay pending for this consumer and are stored by
        the next run.
        """
        key = self.layout.stream(shard)
        stats = DrainStats(shard)
        start = time.monotonic()
        in_flight: tuple[list[Entry], Future[int]] | None = None
        first = True
        try:
            while True:
                done = time.monotonic() - start >= max_seconds
                entries = [] if done else self._read(shard, stats, claim_idle_ms, first)
                first = False
                batch = self._parse(entries)
                committed, in_flight = in_flight, None
                if committed is not None:
                    # Its COMMIT (raises if the store failed: nothing later is stored).
                    stats.inserted += committed[1].result()
                if entries:
                    stats.batches += 1
                    stats.rejected += len(batch.rejected)
                    in_flight = (entries, self._writer.submit(self._store, batch))
                if committed is not None:
                    self._acknowledge(key, committed[0], stats)
                if not entries:
                    break
        finally:
            if in_flight is not None:  # an error above: let the write finish, unacked
                in_flight[1].exception()
        stats.seconds = time.monotonic() - start
        return stats

    def _read(
        self, shard: int, stats: DrainStats, claim_idle_ms: int | None, first: bool
    ) -> list[Entry]:
        """The next batch. A run starts with our own unacknowledged entries (a failed
        COMMIT, say, which would otherwise wait like a dead consumer's), then entries a
        dead consumer left pending; then, and for the rest of the run, new ones. (Claims
        scan the pending list, so they are not repeated for every batch.)"""
        key = self.layout.stream(shard)
        count = self.settings.drain_batch
        idle = self.settings.drain_claim_idle_ms if claim_idle_ms is None else claim_idle_ms
        with redis_errors():
            if shard not in self._groups and self.ensure_group(shard):
                stats.group_created = True
            raw = self._raw(key)
            try:
                claimed: list[Entry] = []
                if first:
                    claimed = _read_reply_entries(
                        raw.xreadgroup(GROUP, self.consumer, {key: "0"}, count=count)
                    ) or _entries(
                        raw.xautoclaim(key, GROUP, self.consumer, idle, "0-0", count=count)[1]
                    )
                fresh = _read_reply_entries(
                    raw.xreadgroup(GROUP, self.consumer, {key: ">"}, count=count)
                )
            except redis.exceptions.ConnectionError:
                self._moved()
                raise
            except redis.ResponseError as exc:
                if str(exc).startswith("MOVED"):
                    self._moved()
                    raise
                if "NOGROUP" not in str(exc):
                    raise
                self._groups.discard(shard)  # the stream was lost (FLUSHALL): start again
                return []
        stats.claimed += len(claimed)
        stats.read += len(fresh)
        return claimed + fresh

    def _acknowledge(self, key: str, entries: list[Entry], stats: DrainStats) -> None:
        """Acknowledge a committed batch and trim what every consumer has acknowledged."""
        with redis_errors():
            self.redis.xack(key, GROUP, *(entry_id for entry_id, _ in entries))
            stats.trimmed += int(self.fcall("trim", (key,), (GROUP,)))

    @staticmethod
    def _parse(entries: Sequence[Entry]) -> _Batch:
        batch = _Batch()
        for entry_id, fields in entries:
            try:
                line, at_ms = staging_line_of(entry_id, fields)
            except (KeyError, ValueError, TypeError):
                batch.rejected.append((entry_id, fields))
                continue
            batch.lines.append(line)
            batch.first_ms = min(batch.first_ms, at_ms)
            batch.last_ms = max(batch.last_ms, at_ms)
        for entry_id, fields in batch.rejected:
            # Not an event: keeping it would block the stream forever.
            log.error("dropping malformed stream entry %s: %r", entry_id, fields)
        return batch

    def _store(self, batch: _Batch) -> int:
        started = time.perf_counter()
        with database_errors(), self.engine.begin() as conn:
            driver: Any = conn.connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            inserted = write_lines(
                driver, batch.lines, batch.first_ms, batch.last_ms, self.settings.key_prefix
            )
        metrics.DRAIN_BATCH_SECONDS.observe(time.perf_counter() - started)
        metrics.DRAINED.inc(inserted)
        return inserted

    def shard_lag(self, shard: int) -> ShardLag:
        key = self.layout.stream(shard)
        with redis_errors():
            length = int(self.redis.xlen(key))
            groups: list[dict[str, Any]] = self.redis.xinfo_groups(key) if length else []
            group = next((g for g in groups if g["name"] == GROUP), None)
            if group is None:  # nothing drained yet: every entry waits
                first = _entries(self._raw(key).xrange(key, count=1)) if length else []
                age = self._age(first[0][0]) if first else None
                return ShardLag(shard, length, 0, length, age)
            pending, last = int(group["pending"]), str(group["last-delivered-id"])
            undelivered = int(group.get("lag") or 0)
            oldest: str | None = None
            if pending:
                # Acknowledged since XINFO was read? Then there is no minimum any more.
                first = self.redis.xpending(key, GROUP)["min"]
                oldest = str(first) if first else None
            elif undelivered:
                after = _entries(self._raw(key).xrange(key, min=f"({last}", count=1))
                oldest = after[0][0] if after else None
            age = self._age(oldest) if oldest else None
        return ShardLag(shard, length, pending, undelivered, age)

    def _age(self, entry_id: str) -> float:
        sec, usec = self.redis.time()
        return max(0.0, (sec * 1000 + usec // 1000 - stream_id(entry_id)[0]) / 1000)

    def lag(self) -> list[ShardLag]:
        """Every shard's lag; also published as the quota_drain_lag_seconds and
        quota_undrained_events gauges."""
        lags = [self.shard_lag(s) for s in range(self.settings.shards)]
        for lag in lags:
            metrics.DRAIN_LAG.labels(str(lag.shard)).set(lag.oldest_undrained_age_s or 0.0)
            metrics.UNDRAINED.labels(str(lag.shard)).set(lag.pending + lag.undelivered)
        return lags
