"""Forgetting one key prefix's data in Redis: the demo's previous run, a benchmark's,
a test's. Never the hot path."""

from __future__ import annotations

from sqlalchemy import make_url

from quota._exceptions import InvalidInput
from quota.settings import Settings
from quota.topology import Client

# The test suite's own names: its database ends in _test, its prefixes start with qt-.
_TEST_DATABASE, _TEST_PREFIX = "_test", "qt-"


def require_own(settings: Settings, role: str) -> None:
    """Refuse, writing nothing, to reset a database or key prefix that is not ``role``'s
    own (``demo`` or ``bench``): they empty whatever they are pointed at, and a shell
    that exported a deployment's QUOTA_DATABASE_URL must not wipe its ledger."""
    database = make_url(settings.database_url).database or ""
    if not database.endswith((f"_{role}", _TEST_DATABASE)):
        raise InvalidInput(
            f"quota {role} empties its database, so it runs only on one whose name ends "
            f"in _{role} (got {database!r}); ./scripts/{role} sets quota_{role}"
        )
    prefix = settings.key_prefix
    if not (prefix.endswith(f"-{role}") or prefix.startswith(_TEST_PREFIX)):
        raise InvalidInput(
            f"quota {role} deletes every key under its prefix, so it runs only on one "
            f"ending in -{role} (got {prefix!r}); ./scripts/{role} sets quota-{role}"
        )


def forget_prefix(client: Client, prefix: str) -> None:
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
