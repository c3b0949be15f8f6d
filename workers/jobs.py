"""The RQ jobs. `rq cron` enqueues `drain` for every shard about every second and
`reconcile` nightly (see workers/cron_config.py)."""

from __future__ import annotations

import logging
from typing import Any

from quota.migrate import ensure_partitions
from quota.runtime import runtime

log = logging.getLogger("quota.jobs")

#: A drain job stops after this long so one busy shard cannot hold a worker forever;
#: the next run (about a second later) carries on.
DRAIN_SECONDS = 5.0
#: A per-shard lock, so runs of one shard never overlap however the queue backs up.
LOCK_SECONDS = 60


def drain(shard: int) -> dict[str, Any]:
    """Drain one shard's stream into Postgres; a no-op if another run holds the shard."""
    rt = runtime()
    lock = rt.redis.lock(
        f"{rt.drainer.layout.shard_tag(shard)}:drain-lock", timeout=LOCK_SECONDS, blocking=False
    )
    if not lock.acquire():
        return {"shard": shard, "skipped": "another drain of this shard is running"}
    try:
        stats = rt.drainer.drain_shard(shard, max_seconds=DRAIN_SECONDS)
        # Ports whose usage went past Redis in a fault: counters equal the ledger again
        # within a drain cycle, not at the nightly run.
        repaired = rt.reconciler.repair_direct(shard)
        if stats.group_created:
            # A new group on a shard: a first run, or Redis lost the shard's data.
            repaired += rt.reconciler.reconcile_shard(shard).ports_checked
    finally:
        lock.release()
    if repaired:
        log.warning("shard %d: %d ports reconciled after a Redis fault", shard, repaired)
    if stats.read or stats.claimed:
        log.info(
            "shard %d: %d read, %d claimed, %d inserted, %d trimmed in %.3f s",
            shard,
            stats.read,
            stats.claimed,
            stats.inserted,
            stats.trimmed,
            stats.seconds,
        )
    return {
        "shard": shard,
        "read": stats.read,
        "claimed": stats.claimed,
        "inserted": stats.inserted,
        "repaired": repaired,
        "seconds": round(stats.seconds, 4),
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
