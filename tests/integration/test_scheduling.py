"""The rq cron configuration and `quota cron` / `quota worker` end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis
from rq import Queue, cron_job_registry
from rq.cron import CronScheduler
from sqlalchemy import Engine

from quota import Gate, Settings
from quota.housekeeping import forget_prefix
from tests.conftest import ledger_totals, record_many


@pytest.fixture
def gate(sync_gate: Gate) -> Gate:
    """These tests are the jobs' scheduling, not the gates': one gate feeds them."""
    return sync_gate


def test_cron_config_registers_every_shard_and_the_nightly_reconcile(
    worker_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUOTA_RECONCILE_AT", "02:07")
    monkeypatch.setenv("QUOTA_SHARDS", "12")
    monkeypatch.setenv("QUOTA_DRAIN_JOBS", "4")
    sys.modules.pop("workers.cron_config", None)
    scheduler = CronScheduler(connection=redis.Redis.from_url(worker_env.rq_url))
    scheduler.load_config_from_file("workers.cron_config")
    jobs = {job.name: job for job in scheduler.get_jobs()}
    prefix = worker_env.key_prefix  # names carry the deployment's prefix, as its queue
    assert set(jobs) == {f"{prefix}:drain-{s}" for s in range(4)} | {f"{prefix}:reconcile"}
    for group in range(4):  # four jobs for twelve shards
        drain = jobs[f"{prefix}:drain-{group}"]
        assert (drain.func_name, drain.args, drain.interval) == ("workers.jobs.drain", (group,), 1)
        assert drain.queue_name == worker_env.key_prefix
        assert drain.job_options["ttl"] <= 10  # stale runs are dropped, never piled up
    assert jobs[f"{prefix}:reconcile"].cron == "7 2 * * *"


def test_forgetting_a_prefix_forgets_its_rq_state_only(
    worker_env: Settings, r: redis.Redis
) -> None:
    """RQ keeps each cron job's enqueued runs by name, and an intermediate queue under
    the queue's key; a deployment's cron names carry its prefix, and its queue is named
    after it, so forgetting the prefix (the tests, the demo, the bench) removes them."""
    # A prefix that extends ours ("<ours>-x") is another deployment's.
    ours, other = f"{worker_env.key_prefix}:drain-0", f"{worker_env.key_prefix}-x:drain-0"
    for name in (ours, other):
        cron_job_registry.add(name, r)
        r.zadd(f"rq:cron_job:{name}:jobs", {"some-job-id": 1.0})
    seen = f"rq:queue:{worker_env.key_prefix}:intermediate:first_seen:some-job-id"
    r.set(seen, 1.0, ex=60)
    forget_prefix(r, worker_env.key_prefix)
    assert not r.exists(seen)
    names = cron_job_registry.get_names(r, cleanup=False)
    assert ours not in names
    assert not r.exists(f"rq:cron_job:{ours}:jobs")
    assert other in names
    assert r.exists(f"rq:cron_job:{other}:jobs")
    forget_prefix(r, f"{worker_env.key_prefix}-x")
    assert other not in cron_job_registry.get_names(r, cleanup=False)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        p.kill()
        p.wait()


def _wait_for(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_one_scheduler_enqueues_drains_and_a_worker_runs_them(
    worker_env: Settings, gate: Gate, pg: Engine, procs: list[subprocess.Popen[str]]
) -> None:
    env = {**os.environ, "QUOTA_SHARDS": str(worker_env.shards), "QUOTA_CRON_LEASE_SECONDS": "2"}
    record_many(gate, 120)
    jobs = worker_env.drain_jobs  # drain jobs enqueued a second, each for 16 shards
    conn = redis.Redis.from_url(worker_env.rq_url)
    queue = Queue(worker_env.queue, connection=conn)

    def cron() -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "quota", "cron"],
            env=env,
            text=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        procs.append(proc)
        return proc

    first = cron()
    _wait_for(lambda: queue.count >= jobs, 20)
    second = cron()
    # Well past several lease renewals: the first keeps scheduling, the second waits.
    time.sleep(3.5)
    assert first.poll() is None
    assert second.poll() is None
    enqueued = queue.count
    time.sleep(1.2)
    assert queue.count >= enqueued + jobs  # still enqueueing every second
    first.kill()
    first.wait()
    # The standby takes over once the dead scheduler's lease runs out.
    before = queue.count
    _wait_for(lambda: queue.count >= before + jobs, 10)
    second.kill()
    _, standby_log = second.communicate()
    assert standby_log.index("waiting to be the only active scheduler") < standby_log.index(
        "quota cron: active"
    )
    ran = subprocess.run(
        [sys.executable, "-m", "quota", "worker", "--burst"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ledger_totals(pg)["rows"] == 120, ran.stderr
    assert queue.count == 0


def test_the_nightly_job_reconciles_and_keeps_partitions_ahead(
    worker_env: Settings, gate: Gate, pg: Engine
) -> None:
    from workers import jobs

    record_many(gate, 40)
    report = jobs.reconcile()
    assert report["ports_checked"] == 7
    assert report["ports_drifted"] == 0  # the catch-up drained everything first
    assert len(report["partitions"]) == 5  # last month, this month and three ahead
    assert ledger_totals(pg)["rows"] == 40


def test_the_worker_is_quiet_by_default_and_summarises(
    worker_env: Settings, sync_gate: Gate, pg: Engine
) -> None:
    """16 drain jobs a second logged ~64 INFO lines a second (RQ's lines per job): by
    default a worker logs problems and one summary line per interval, nothing per job."""
    record_many(sync_gate, 60)
    queue = Queue(worker_env.queue, connection=redis.Redis.from_url(worker_env.rq_url))

    def run_worker(*args: str, summary: str) -> list[str]:
        for _ in range(3):  # three seconds' worth of drain jobs
            for group in range(worker_env.drain_jobs):
                queue.enqueue("workers.jobs.drain", group)
        done = subprocess.run(
            [sys.executable, "-m", "quota", "worker", "--burst", *args],
            env={**os.environ, "QUOTA_WORKER_SUMMARY_SECONDS": summary},
            check=True, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        return done.stderr.splitlines()

    first = run_worker(summary="0")  # a summary after every job that drained something
    assert ledger_totals(pg)["rows"] == 60
    summaries = [line for line in first if "drained in the last" in line]
    read = [re.search(r"(\d+) events read \(0 taken over\), (\d+) stored", s) for s in summaries]
    assert sum(int(m[1]) for m in read if m) == sum(int(m[2]) for m in read if m) == 60
    assert not [line for line in first if "Job OK" in line or "drain(" in line]
    quiet = run_worker(summary="60")  # 48 idle jobs
    assert quiet == [], quiet
    loud = run_worker("--log-level", "debug", summary="60")
    assert len([line for line in loud if "Job OK" in line]) == 3 * worker_env.drain_jobs
