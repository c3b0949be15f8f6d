"""Forgetting one key prefix's data in Redis: the demo's previous run, a benchmark's,
a test's. Never the hot path."""

from __future__ import annotations

import redis


def forget_prefix(client: redis.Redis, prefix: str) -> None:
    """Delete every key under ``prefix``, the RQ registries of the queue named after it
    (RQ keys them by queue name, keeps its intermediate queue under the queue's key,
    and lists the queue in rq:queues), and the history of its cron jobs (named
    "<prefix>:...", workers/cron_config.py)."""
    keys = list(client.scan_iter(match=f"{prefix}:*", count=5000))
    keys += client.scan_iter(match=f"rq:*:{prefix}", count=5000)
    keys += client.scan_iter(match=f"rq:queue:{prefix}:*", count=5000)
    keys += client.scan_iter(match=f"rq:cron_job:{prefix}:*", count=5000)
    for i in range(0, len(keys), 5000):
        client.delete(*keys[i : i + 5000])
    client.srem("rq:queues", f"rq:queue:{prefix}")
    cron_jobs = [name for name, _ in client.zscan_iter("rq:cron_jobs", match=f"{prefix}:*")]
    if cron_jobs:
        client.zrem("rq:cron_jobs", *cron_jobs)
