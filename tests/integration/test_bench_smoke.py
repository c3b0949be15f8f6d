"""The benchmark harness runs (quick mode) and writes its report: it cannot rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import Engine

from quota import Settings


def test_quick_bench_writes_every_section(worker_env: Settings, pg: Engine, tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    subprocess.run(
        [sys.executable, "-m", "quota", "bench", "--quick", "--output", str(out)],
        env=dict(os.environ),
        check=True,
        capture_output=True,
        timeout=240,
    )
    report = out.read_text()
    for row in ("1 process", "2 processes", "offered load", "oldest undrained event, p99"):
        assert row in report
    assert "Redis 7" in report
    assert "PostgreSQL" in report
