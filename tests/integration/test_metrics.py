"""Prometheus metrics: in the embedding app's registry, and served by `quota worker`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY
from rq import Queue

from quota import Gate, Settings
from tests.conftest import record_many


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_gate_calls_are_counted_in_the_default_registry(gate: Gate) -> None:
    gate.set_budget("p", enabled=True, soft_cap_tokens=5, hard_cap_tokens=10, updated_by="u")
    ok, refused = (
        sample("quota_decisions_total", op="check", outcome="ok"),
        sample("quota_decisions_total", op="check", outcome="estimated-exceeds-cap"),
    )
    timed = sample("quota_script_seconds_count", op="check")
    gate.check("p", 1)
    gate.check("p", 11)
    gate.check("p", 11)
    assert sample("quota_decisions_total", op="check", outcome="ok") == ok + 1
    assert (
        sample("quota_decisions_total", op="check", outcome="estimated-exceeds-cap") == refused + 2
    )
    assert sample("quota_script_seconds_count", op="check") == timed + 3
    counted = sample("quota_decisions_total", op="record", outcome="counted")
    dup = sample("quota_decisions_total", op="record", outcome="duplicate")
    for _ in range(2):
        gate.record(
            port_id="p",
            feature="f",
            provider="p",
            model="m",
            input_tokens=1,
            output_tokens=0,
            request_id="same",
        )
    assert sample("quota_decisions_total", op="record", outcome="counted") == counted + 1
    assert sample("quota_decisions_total", op="record", outcome="duplicate") == dup + 1


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def worker_tmp(tmp_path: Path) -> Path:
    """The worker's TMPDIR: where it makes its metrics directory."""
    (tmp_path / "tmp").mkdir()
    return tmp_path / "tmp"


@pytest.fixture
def worker_proc(
    worker_env: Settings, free_port: int, worker_tmp: Path
) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["TMPDIR"] = str(worker_tmp)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "quota",
            "worker",
            "--processes",
            "2",
            "--metrics-port",
            str(free_port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield proc
    proc.terminate()
    proc.wait(timeout=30)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def metric(text: str, name: str) -> float:
    values = [
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    ]
    return sum(values)


def test_worker_serves_drain_metrics_from_all_its_processes(
    worker_env: Settings,
    gate: Gate,
    free_port: int,
    worker_proc: subprocess.Popen[bytes],
    worker_tmp: Path,
) -> None:
    """Both processes' drain counters on one port; the metrics directory the worker made
    for them is removed when it stops."""
    record_many(gate, 90)
    queue = Queue(worker_env.queue, connection=redis.Redis.from_url(worker_env.rq_url))
    for group in range(worker_env.drain_jobs):
        queue.enqueue("workers.jobs.drain", group)
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline:
        try:
            text = scrape(free_port)
        except OSError:
            text = ""  # not listening yet
        if metric(text, "quota_drained_events_total") >= 90 and "quota_drain_lag_seconds{" in text:
            break
        time.sleep(0.3)
    assert metric(text, "quota_drained_events_total") == 90
    assert metric(text, "quota_drain_batch_seconds_count") >= 1
    assert 'quota_drain_lag_seconds{shard="0"}' in text
    assert worker_proc.poll() is None
    assert len(list(worker_tmp.glob("quota-metrics-*"))) == 1
    worker_proc.terminate()  # a warm shutdown: the directory it made goes with it
    assert worker_proc.wait(timeout=30) == 0
    assert list(worker_tmp.glob("quota-metrics-*")) == []
