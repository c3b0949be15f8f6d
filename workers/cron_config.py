"""`rq cron` configuration: the drain of every shard about every second, and the
reconciliation nightly at QUOTA_RECONCILE_AT (UTC).

Run it through `quota cron`, which makes sure exactly one scheduler is active and
runs it in UTC (RQ reads cron strings in the scheduler's local time). Plain
`rq cron workers.cron_config` works too, without those two guarantees.
"""

from __future__ import annotations

from rq import cron

from quota.settings import Settings
from workers import jobs

settings = Settings()
QUEUE = settings.queue
# RQ keeps each cron job's history by name (rq:cron_job:<name>:jobs, rq:cron_jobs):
# named "<prefix>:...", as the deployment's keys are (a prefix holds no ":"), two
# deployments sharing a Redis keep apart there too, and forgetting a prefix finds them.

for group in range(min(settings.drain_jobs, settings.shards)):
    cron.register(
        jobs.drain,
        QUEUE,
        args=(group,),
        interval=1,
        name=f"{QUEUE}:drain-{group}",
        # A run waiting longer than this is dropped: the next one is right behind it,
        # so a slow worker never faces a pile of stale drains.
        ttl=10,
        job_timeout=120,
        result_ttl=0,
        failure_ttl=3600,
    )

_hour, _minute = settings.reconcile_at.split(":")
cron.register(
    jobs.reconcile,
    QUEUE,
    cron=f"{int(_minute)} {int(_hour)} * * *",
    name=f"{QUEUE}:reconcile",
    ttl=3600,
    job_timeout=3600,
    result_ttl=7 * 86400,
)
