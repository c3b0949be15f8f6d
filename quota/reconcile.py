"""Reconciliation: make the Redis counters equal the Postgres ledger, under live traffic.

For each chunk of ports of a shard, one script reads their counters together with the
stream position S they reflect (counting and appending are one atomic step, so the
counters hold exactly the events up to S). The drain is brought up to S, the ledger
is summed for events up to S (plus events written directly while Redis was down), and
the difference is added to the counters with HINCRBY: events counted after the
snapshot stay counted. If Redis lost everything, this rebuilds the counters, and
every budget copy is refreshed from Postgres as well.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Engine, select, text

from quota import metrics
from quota._backend import database_errors, redis_errors
from quota._exceptions import BackendError
from quota.core import budget_copy
from quota.counters import Counters, counter_writes, deltas, fold_days
from quota.drain import GROUP, Drainer
from quota.entries import stream_id
from quota.keys import KeyLayout, shard_of
from quota.periods import Period, Windows, from_ms
from quota.queries import budget_of
from quota.schema import budgets
from quota.settings import Settings
from quota.topology import Client

log = logging.getLogger("quota.reconcile")
T = TypeVar("T")

CHUNK = 400  # ports per snapshot script (3 keys each)
_PERIODS: tuple[Period, ...] = ("day", "week", "month")
#: Ports whose drift the kept report lists (the largest).
KEPT_DRIFT = 200


@dataclass
class ReconcileReport:
    ports_checked: int = 0
    ports_drifted: int = 0
    tokens_corrected: int = 0  # sum of |delta| over period totals
    budgets_refreshed: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    drift: dict[str, dict[str, int]] = field(
        default_factory=dict
    )  # port -> "period:field" -> delta

    def as_dict(self) -> dict[str, Any]:
        return {
            "ports_checked": self.ports_checked,
            "ports_drifted": self.ports_drifted,
            "tokens_corrected": self.tokens_corrected,
            "budgets_refreshed": self.budgets_refreshed,
            "seconds": round(self.seconds, 3),
            "dry_run": self.dry_run,
            "drift": self.drift,
        }


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        client: Client,
        engine: Engine,
        drainer: Drainer | None = None,
    ) -> None:
        self.settings = settings
        self.redis = client
        self.engine = engine
        self.layout = KeyLayout(settings.key_prefix, settings.shards)
        self.drainer = drainer or Drainer(settings, client, engine)
        # FCALLs (snapshot, adjust) through the gate's transport, the drainer's.
        self._call = self.drainer.fcall

    def run(
        self,
        *,
        ports: Sequence[str] | None = None,
        dry_run: bool = False,
        catch_up_timeout: float = 60.0,
    ) -> ReconcileReport:
        started = time.monotonic()
        report = ReconcileReport(dry_run=dry_run)
        w = self._server_windows()
        by_shard: dict[int, set[str]] = defaultdict(set)
        for port in ports if ports is not None else self.active_ports(w):
            by_shard[shard_of(port, self.settings.shards)].add(port)
        for shard, shard_ports in sorted(by_shard.items()):
            for chunk in _chunks(sorted(shard_ports), CHUNK):
                self._reconcile_chunk(shard, chunk, w, report, dry_run, catch_up_timeout)
        if not dry_run:
            metrics.RECONCILE_DRIFT.inc(report.tokens_corrected)
            metrics.RECONCILE_DRIFTED_PORTS.inc(report.ports_drifted)
        if not dry_run and ports is None:
            report.budgets_refreshed = self.refresh_budgets()
        report.seconds = time.monotonic() - started
        if not dry_run and ports is None:
            self._keep(report)
        # A full run is news; the drain's runs over a few ports are counted by its job.
        log.log(
            logging.INFO if ports is None else logging.DEBUG,
            "reconciled %d ports: %d drifted, %d tokens corrected in %.2f s",
            report.ports_checked,
            report.ports_drifted,
            report.tokens_corrected,
            report.seconds,
        )
        return report

    def _keep(self, report: ReconcileReport) -> None:
        """Keep the full run's report in Redis (`quota serve` shows it); losing it
        loses only the page's figures."""
        with redis_errors():
            sec, usec = self.redis.time()
            finished = datetime.fromtimestamp(sec + usec / 1e6, UTC).isoformat()
            kept = report.as_dict()
            worst = sorted(report.drift.items(), key=lambda kv: -sum(map(abs, kv[1].values())))
            kept["drift"] = dict(worst[:KEPT_DRIFT])  # a bounded page, and a bounded key
            kept["drift_omitted"] = max(0, len(worst) - KEPT_DRIFT)
            kept["finished_at"] = finished
            self.redis.set(self.layout.last_reconcile, json.dumps(kept))

    def reconcile_shards(self, shards: Collection[int]) -> ReconcileReport:
        """Reconcile every active port of these shards: the drain found their consumer
        groups missing, so Redis may have lost their counters (within seconds, rather
        than at the nightly run). One pass over the keyspace for all of them."""
        wanted = set(shards)
        if not wanted:
            return ReconcileReport()
        w = self._server_windows()
        n = self.settings.shards
        ports = [p for p in self.active_ports(w) if shard_of(p, n) in wanted]
        return self.run(ports=ports)

    def repair_direct(self, shards: Collection[int], limit: int = 10_000) -> int:
        """Reconcile the shards' ports with usage written straight to Postgres (the
        gate's fallback, a spool replay) that no reconciliation has counted yet, then
        mark those rows counted; returns how many ports. Rows written meanwhile wait for
        the next run: only rows read before the reconcile summed the ledger are marked."""
        query = text(
            "SELECT event_id, port_id FROM ledger_direct "
            "WHERE key_prefix = :prefix AND NOT reconciled LIMIT :limit"
        )
        with database_errors(), self.engine.connect() as conn:
            rows = conn.execute(query, {"prefix": self.settings.key_prefix, "limit": limit}).all()
        wanted = set(shards)
        mine = [(e, p) for e, p in rows if shard_of(p, self.settings.shards) in wanted]
        if not mine:
            return 0
        ports = sorted({p for _, p in mine})
        self.run(ports=ports)
        with database_errors(), self.engine.begin() as conn:
            conn.execute(
                text("UPDATE ledger_direct SET reconciled = true WHERE event_id = ANY(:ids)"),
                {"ids": [e for e, _ in mine]},
            )
        return len(ports)

    def prune_direct(self) -> int:
        """Forget counted direct rows older than the idempotency window (the drain needs
        them only that long, to drop a stream twin by request id), with a day to spare."""
        query = text(
            "DELETE FROM ledger_direct WHERE key_prefix = :prefix AND reconciled "
            "AND occurred_at < now() - make_interval(secs => :secs)"
        )
        secs = self.settings.idempotency_seconds + 86400
        with database_errors(), self.engine.begin() as conn:
            deleted = conn.execute(query, {"prefix": self.settings.key_prefix, "secs": secs})
            return int(deleted.rowcount)

    def _server_windows(self) -> Windows:
        with redis_errors():
            sec, usec = self.redis.time()
        return Windows.at(from_ms(sec * 1000 + usec // 1000))

    def active_ports(self, w: Windows) -> set[str]:
        """Ports with a counter in a current period (Redis) or ledger rows in one (Postgres)."""
        current = {("d", w.day_id), ("w", w.week_id), ("m", w.month_id)}
        ports: set[str] = set()
        # One pass over the keyspace for every shard (SCAN walks all keys whatever the
        # pattern): "<prefix>:{q<s>}:u:<d|w|m>:<period id>:<port>", the port may hold ':'.
        pattern = f"{self.settings.key_prefix}:{{q*}}:u:*"
        with redis_errors():
            for key in self.redis.scan_iter(match=pattern, count=5000):
                _, _, _, letter, pid, port = str(key).split(":", 5)
                if (letter, pid) in current:
                    ports.add(port)
        since = from_ms(min(w.week_start_ms, w.month_start_ms)).date()
        with database_errors(), self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT DISTINCT port_id FROM ledger_daily "
                    "WHERE key_prefix = :prefix AND day >= :d"
                ),
                {"prefix": self.settings.key_prefix, "d": since},
            )
            ports.update(r[0] for r in rows)
        return ports

    def _reconcile_chunk(
        self,
        shard: int,
        ports: Sequence[str],
        w: Windows,
        report: ReconcileReport,
        dry_run: bool,
        timeout: float,
    ) -> None:
        position, w, redis_side = self._snapshot(shard, ports, w)
        self._catch_up(shard, position, timeout)
        pg_side = self._ledger_sums(ports, w, position)
        fixes = deltas(redis_side, pg_side)
        report.ports_checked += len(ports)
        corrected: dict[str, int] = defaultdict(int)
        for (port, period), diff in sorted(fixes.items()):
            corrected[port] = max(corrected[port], abs(diff.get("t", 0)))
            report.drift.setdefault(port, {}).update(
                {f"{period}:{f}": d for f, d in sorted(diff.items())}
            )
        report.ports_drifted += len(corrected)
        # A port's correction is its largest period-total change (an event is in all three).
        report.tokens_corrected += sum(corrected.values())
        if fixes and not dry_run:
            self._apply(shard, fixes, w)

    def _snapshot(
        self, shard: int, ports: Sequence[str], w: Windows
    ) -> tuple[tuple[int, int], Windows, Counters]:
        for _ in range(3):
            keys = [self.layout.stream(shard)]
            for port in ports:
                keys.extend(self.layout.for_port(port).usage_all(w))
            with redis_errors():
                reply = self._call("snapshot", keys, (w.day,))
            if reply[0] == -2:  # the day turned: use the server's
                w = Windows.at(from_ms(int(reply[1])))
                continue
            now_ms, last = int(reply[1]), str(reply[2])
            # With no stream, or one that never had an entry (the drain's XGROUP MKSTREAM
            # after Redis lost it), nothing since it vanished is counted; any later
            # event gets an id at or above the server's clock.
            position = stream_id(last) if last and last != "0-0" else (now_ms - 1, 2**62)
            counters: Counters = {}
            hashes = iter(reply[3:])
            for port in ports:
                for period in _PERIODS:
                    flat = next(hashes)
                    values = {str(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}
                    if values:
                        counters[(port, period)] = values
            return position, w, counters
        raise BackendError("the server's day kept changing during the snapshot")

    def _catch_up(self, shard: int, position: tuple[int, int], timeout: float) -> None:
        """Drain until every entry up to ``position`` is in Postgres and acknowledged."""
        deadline = time.monotonic() + timeout
        while not self._caught_up(self.layout.stream(shard), position):
            if time.monotonic() > deadline:
                raise BackendError(
                    f"shard {shard}: the drain did not reach the snapshot "
                    f"position within {timeout:.0f} s"
                )
            # Entries another consumer holds are taken over after a second: a redelivered
            # event is dropped by the ledger's unique key, so this is always safe.
            stats = self.drainer.drain_shard(shard, max_seconds=0.5, claim_idle_ms=1000)
            if stats.read + stats.claimed == 0:
                time.sleep(0.05)  # another consumer's entries are not claimable yet

    def _caught_up(self, key: str, position: tuple[int, int]) -> bool:
        with redis_errors():
            if not self.redis.xlen(key):
                return True  # nothing waits (or the stream was lost with its counters)
            groups: list[dict[str, Any]] = self.redis.xinfo_groups(key)
            group = next((g for g in groups if g["name"] == GROUP), None)
            if group is None or stream_id(str(group["last-delivered-id"])) < position:
                return False
            pending = self.redis.xpending(key, GROUP)
        return not pending["pending"] or stream_id(str(pending["min"])) > position

    def _ledger_sums(self, ports: Sequence[str], w: Windows, position: tuple[int, int]) -> Counters:
        since = from_ms(min(w.week_start_ms, w.month_start_ms))
        until = from_ms(w.day_end_ms)
        query = text(
            """SELECT port_id, feature, (occurred_at AT TIME ZONE 'UTC')::date, sum(total_tokens)
               FROM ledger
               WHERE key_prefix = :prefix AND port_id = ANY(:ports)
                 AND occurred_at >= :since AND occurred_at < :until
                 AND (stream_ms IS NULL OR (stream_ms, stream_seq) <= (:ms, :seq))
               GROUP BY 1, 2, 3"""
        )
        params = {
            "prefix": self.settings.key_prefix,
            "ports": list(ports),
            "since": since,
            "until": until,
            "ms": position[0],
            "seq": position[1],
        }
        with database_errors(), self.engine.connect() as conn:
            rows = [(r[0], r[1], r[2], int(r[3])) for r in conn.execute(query, params)]
        return fold_days(rows, w)

    def _apply(self, shard: int, fixes: Counters, w: Windows) -> None:
        keys, args = counter_writes(
            fixes, w, lambda port, period, pid: self.layout.for_port(port).usage(period, pid)
        )
        with redis_errors():
            self._call("adjust", keys, args)

    def refresh_budgets(self) -> int:
        """Write every stored budget's Redis copy (version-guarded), a batch per round trip."""
        with database_errors(), self.engine.connect() as conn:
            rows = conn.execute(select(budgets)).all()
        layout = self.layout
        for batch in _chunks(rows, 1000):  # one round trip each, through the transport

            def calls(
                batch: Sequence[Any] = batch,
            ) -> Iterator[tuple[tuple[str], tuple[Any, ...]]]:
                for row in batch:
                    yield (
                        (layout.for_port(row.port_id).budget,),
                        budget_copy(budget_of(row), row.version),
                    )

            with redis_errors():
                self._call.call_each("budget_put", calls, lambda n, reply: None)
        return len(rows)
