"""Instructions Redis executes per call (row 9, made repeatable): a private
redis-server runs under valgrind's callgrind, and each operation's calls are counted
between a zero and a dump of its counters.

Server-side microseconds on a shared VM move by ±50 % between runs; instruction
counts do not (the same figure to within ~1 %, whatever else the machine does), so
they are what a change to a Lua function should be judged by. They leave out cache
misses, which is why the timed rows stay beside them.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from quota import RateLimit
from quota.gate import Gate
from quota.settings import Settings
from tests.benchmarks._measure import Row
from tests.benchmarks.hotpath import HUGE, budgets, operations
from tests.servers import free_port

_TOOLS = ("valgrind", "callgrind_control", "redis-server")
_TRIVIAL = "trivial one-key INCRBY script"


class _Callgrind:
    """redis-server under callgrind, in a temporary directory, stopped on exit."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="quota-callgrind-"))
        self.port = free_port()
        self._proc = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={self._dir}/out.%p",
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = redis.Redis(port=self.port, decode_responses=True)
        deadline = time.monotonic() + 60  # valgrind takes seconds to start a server
        while True:
            try:
                self.client.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    self.close()
                    raise RuntimeError("redis-server did not start under valgrind") from None
                time.sleep(0.2)
        self._pid = str(self._proc.pid)

    def _control(self, flag: str) -> None:
        subprocess.run(["callgrind_control", flag, self._pid], check=True, capture_output=True)

    def count(self, calls: Callable[[], object], n: int) -> float:
        """Instructions the server executed per call of ``calls``."""
        self._control("-z")
        for _ in range(n):
            calls()
        before = set(self._dir.glob("out.*"))
        self._control("-d")
        dumps = sorted(set(self._dir.glob("out.*")) - before, key=lambda p: p.stat().st_mtime)
        text = dumps[-1].read_text(errors="replace")
        for dump in dumps:
            dump.unlink()
        total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        if total is None:
            raise RuntimeError("callgrind dump without totals")
        return int(total.group(1)) / n

    def close(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        shutil.rmtree(self._dir, ignore_errors=True)


def _limited_reserve(gate: Gate, server: _Callgrind, calls: int, plain: Row) -> Row:
    """reserve on ports with two rate limits (never reached) and a cap on its feature,
    against reserve on ports without (``plain``, the row above)."""
    ports = [f"limited-{i}" for i in range(100)]
    limits = [RateLimit(requests=10**9, per_seconds=60), RateLimit(tokens=10**12, per_seconds=60)]
    for port in ports:
        gate.set_budget(
            port, enabled=True, soft_cap_tokens=HUGE // 2, hard_cap_tokens=HUGE,
            rate_limits=limits, feature_caps={"ocr": HUGE}, updated_by="bench",
        )  # fmt: skip
    rng = random.Random(2)

    def reserve() -> None:
        gate.reserve(rng.choice(ports), 1500, "ocr")

    for port in ports:  # warm: budget copies, buckets, what the gate learns of each port
        gate.reserve(port, 1500, "ocr")
    return Row(
        "instructions",
        "Redis instructions per call: reserve, 2 rate limits + a feature cap",
        server.count(reserve, calls),
        "instructions",
        note="ratio against reserve without them (goal ≤ 1.3×)",
    ).against(plain)


def bench_instructions(settings: Settings, calls: int) -> list[Row]:
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        return [Row("instructions", "Redis instructions per call", 0, "", note=f"needs {missing}")]
    server = _Callgrind()
    try:
        local = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{server.port}/0"})
        with Gate(local) as gate:
            ports = [f"port-{i}" for i in range(100)]
            budgets(gate, ports)
            ops, held = operations(gate, server.client, ports, seed=1)
            for fn in ops.values():  # warm: budget copies, counters, the library
                fn()
            held.clear()
            rows: list[Row] = []
            for name, fn in ops.items():
                row = Row(
                    "instructions",
                    f"Redis instructions per call: {_TRIVIAL if name == 'baseline' else name}",
                    server.count(fn, calls),
                    "instructions",
                    note="callgrind; repeatable to ~1 %" if not rows else "",
                )
                rows.append(row if not rows else row.against(rows[0]))
            rows.append(_limited_reserve(gate, server, calls, rows[2]))
            return rows
    finally:
        server.close()
