"""The RQ jobs. `rq cron` enqueues `drain` for every group of shards about every second
and `reconcile` nightly (see workers/cron_config.py)."""

from __future__ import annotations

import logging
import time
from typing import Any

from quota.drain import DrainStats, drain_group
from quota.migrate import ensure_partitions
from quota.runtime import runtime

log = logging.getLogger("quota.jobs")

#: A drain job stops after this long so busy shards cannot hold a worker forever; the
#: next run (about a second later) carries on.
DRAIN_SECONDS = 5.0
#: A per-shard lock, so runs of one shard never overlap however the queue backs up.
LOCK_SECONDS = 60


class _Summary:
    """What this worker process drained since its last summary line: one INFO line per
    interval instead of one per job (16 jobs a second would log ~0.7 GB a day)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.since = time.monotonic()
        self.runs = 0
        self.stats = DrainStats(-1)
        self.repaired = 0

    def add(self, stats: DrainStats, repaired: int, every: float) -> None:
        self.runs += 1
        self.stats.add(stats)
        self.repaired += repaired
        elapsed = time.monotonic() - self.since
        if elapsed < every:
            return
        s = self.stats
        if s.read or s.claimed or self.repaired:
            log.info(
                "drained in the last %.0f s: %d runs, %d events read (%d taken over), "
                "%d stored, %d ports repaired",
                elapsed,
                self.runs,
                s.read + s.claimed,
                s.claimed,
                s.inserted,
                self.repaired,
            )
        self.reset()


_summary = _Summary()


def drain(group: int) -> dict[str, Any]:
    """Drain one group of shards' streams into Postgres (QUOTA_DRAIN_JOBS groups; the
    shards s with s mod QUOTA_DRAIN_JOBS == group). A shard another run holds is skipped."""
    rt = runtime()
    shards = drain_group(group, rt.settings.shards, rt.settings.drain_jobs)
    total, skipped = DrainStats(group), 0
    done: list[int] = []
    created: list[int] = []
    deadline = time.monotonic() + DRAIN_SECONDS
    for i, shard in enumerate(shards):
        # Each shard gets its share of what is left (an idle one uses a millisecond of
        # it), so one busy shard cannot starve the rest; one that got none drains next run.
        left = deadline - time.monotonic()
        if left <= 0:
            break
        lock = rt.redis.lock(
            f"{rt.drainer.layout.shard_tag(shard)}:drain-lock", timeout=LOCK_SECONDS, blocking=False
        )
        if not lock.acquire():
            skipped += 1
            continue
        try:
            stats = rt.drainer.drain_shard(shard, max_seconds=left / (len(shards) - i))
        finally:
            lock.release()
        total.add(stats)
        done.append(shard)
        if stats.group_created:
            created.append(shard)
    # New groups: a first run, or Redis lost the shards' data (one keyspace scan for all).
    reconciled = rt.reconciler.reconcile_shards(created).ports_checked
    # Ports whose usage went past Redis in a fault: counters equal the ledger again
    # within a drain cycle, not at the nightly run.
    direct = rt.reconciler.repair_direct(done)
    if direct:
        log.warning("drain group %d: %d ports reconciled after a Redis fault", group, direct)
    if reconciled:
        log.info(
            "drain group %d: %d ports reconciled for shards drained for the first time "
            "(a new deployment, or Redis lost them)",
            group,
            reconciled,
        )
    repaired = direct + reconciled
    _summary.add(total, repaired, rt.settings.worker_summary_seconds)
    if total.read or total.claimed:
        log.debug(
            "drain group %d (%d shards): %d read, %d claimed, %d inserted, %d trimmed in %.3f s",
            group,
            len(done),
            total.read,
            total.claimed,
            total.inserted,
            total.trimmed,
            total.seconds,
        )
    return {
        "group": group,
        "shards": len(done),
        "skipped": skipped,
        "read": total.read,
        "claimed": total.claimed,
        "inserted": total.inserted,
        "repaired": repaired,
        "seconds": round(total.seconds, 4),
    }


def reconcile(dry_run: bool = False) -> dict[str, Any]:
    """Reconcile every active port's Redis counters with the Postgres ledger, and create
    the ledger partitions of the coming months."""
    rt = runtime()
    lock = rt.redis.lock(f"{rt.settings.key_prefix}:reconcile-lock", timeout=3600, blocking=False)
    if not lock.acquire():
        return {"skipped": "another reconciliation is running"}
    try:
        report = rt.reconciler.run(dry_run=dry_run).as_dict()
        if not dry_run:
            # Nightly is a good time to keep ledger partitions months ahead as well.
            report["partitions"] = ensure_partitions(rt.settings.database_url)
            report["direct_rows_pruned"] = rt.reconciler.prune_direct()
        return report
    finally:
        lock.release()
