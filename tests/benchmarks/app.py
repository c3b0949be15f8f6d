"""The example app under load: uvicorn with 2 workers, `wrk` with 200 connections,
reserve -> a 50 ms LLM stand-in -> commit per request. The same app without a gate,
with AsyncGate, and with the sync Gate in the thread pool take turns round by round."""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from quota.gate import Gate
from quota.settings import Settings
from tests.benchmarks._load import stop, wrk
from tests.benchmarks._measure import Row, reset
from tests.benchmarks.hotpath import HUGE
from tests.servers import free_port

VARIANTS = {
    "no gate": "tests.benchmarks.apps:nogate_app",
    "AsyncGate": "tests.benchmarks.apps:async_app",
    "sync Gate in the thread pool": "tests.benchmarks.apps:threadpool_app",
}
_POST = """wrk.method = "POST"
wrk.body = '{"prompt": "Summarise the quarterly report in three lines.", "max_tokens": 100}'
wrk.headers["Content-Type"] = "application/json"
"""


def _serve(target: str, port: int, settings: Settings) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "QUOTA_KEY_PREFIX": settings.key_prefix,
        "QUOTA_DATABASE_URL": settings.database_url,
        "QUOTA_REDIS_URL": settings.redis_url,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", target, "--workers", "2", "--port", str(port),
         "--host", "127.0.0.1", "--log-level", "warning", "--no-access-log"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            time.sleep(1.0)  # both workers up
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"uvicorn did not start {target}")


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}/ports/bench-app/completions"


def bench_app(settings: Settings, client: redis.Redis, seconds: float, rounds: int) -> list[Row]:
    if shutil.which("wrk") is None:  # said, and the section's rows and target left out
        print("app: not measured: wrk is not installed (Debian: apt-get install wrk)")
        return []
    reset(settings, client)
    with Gate(settings) as gate:
        gate.set_budget(
            "bench-app", enabled=True, soft_cap_tokens=HUGE // 2, hard_cap_tokens=HUGE,
            updated_by="bench",
        )  # fmt: skip
    script = Path(tempfile.mkdtemp(prefix="quota-wrk-")) / "post.lua"
    script.write_text(_POST)
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in VARIANTS}
    try:
        for _ in range(rounds):
            for name, target in VARIANTS.items():
                port = free_port()
                proc = _serve(target, port, settings)
                try:
                    wrk(_url(port), 2, script, 200)  # warm: connections, budget copies
                    results[name].append(wrk(_url(port), seconds, script, 200))
                finally:
                    stop(proc)
    finally:
        shutil.rmtree(script.parent, ignore_errors=True)
    base = results["no gate"]
    rows = []
    for name, runs in results.items():
        rps = statistics.median(r[0] for r in runs)
        p50 = statistics.median(r[1] for r in runs)
        p99 = statistics.median(r[2] for r in runs)
        row = Row(
            "app", f"example app, {name}", rps, "requests/s", p50 * 1000, p99 * 1000,
            note=f"2 uvicorn workers, wrk 200 connections, 50 ms LLM stand-in; p99 "
            f"{p99 - statistics.median(b[2] for b in base):+.1f} ms against no gate",
        )  # fmt: skip
        if name != "no gate":
            row = row.against(
                Row("app", "", rps, ""),
                statistics.median(r[0] / b[0] for r, b in zip(runs, base, strict=True)),
            )
        rows.append(row)
    return rows
