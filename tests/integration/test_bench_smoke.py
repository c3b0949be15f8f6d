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
        [sys.executable, "-m", "tests.benchmarks", "--quick", "--output", str(out)],
        env=dict(os.environ),
        check=True,
        capture_output=True,
        timeout=420,
    )
    report = out.read_text()
    for row in (
        "baseline: raw redis-py EVALSHA",
        "gate.reserve",
        "4 processes",
        "gate.check_many",
        "limits FixedWindow",
        "limits MovingWindow",
        "seed check (Postgres SUM), 10,000 ledger rows",
        "1 process",
        "2 processes",
        "offered load",
        "oldest undrained event, p99",
        "reconcile 500 active ports",
        "Redis memory per active port",
        "Redis time per call: reserve",
        "Redis instructions per call: reserve",
        "Python per call, FCALL answered in-process: gate.commit",
        "Python per port, FCALLs answered in-process: gate.check_many",
        "dashboard overview, 200 ports, 20,000 ledger rows",
        "statements the pages run that scan the ledger",
    ):
        assert row in report
    assert "Redis 7" in report
    assert "## Targets" in report
    # The prose comes from Markdown files shipped in the package, after the targets.
    assert report.index("## Targets") < report.index("## How to read these")
    assert report.index("## How to read these") < report.index("## Where the time goes")
    assert "| check, sequential, vs raw EVALSHA | ≥ 0.85× |" in report
    assert "PostgreSQL" in report
