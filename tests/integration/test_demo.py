"""The demo (the README's first command) runs end to end and tells a consistent story."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from sqlalchemy import Engine

from quota import Settings
from tests.conftest import ledger_totals


def test_demo_runs_and_reconciles_cleanly(worker_env: Settings, pg: Engine) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "quota",
            "demo",
            "--seconds",
            "2",
            "--processes",
            "2",
            "--ports",
            "4",
        ],
        env={**os.environ, "COLUMNS": "80"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "acme-small" in out
    assert "Per-feature breakdown" in out
    committed = int(re.search(r"([\d,]+) calls committed", out).group(1).replace(",", ""))  # type: ignore[union-attr]
    drained = int(re.search(r"drained ([\d,]+) usage events", out).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert committed == drained == ledger_totals(pg)["rows"] > 0
    assert "reconciliation: 4 ports checked against the ledger, 0 drifted" in out
    assert "decisions/s" in out
    widest = max(out.splitlines(), key=len)
    assert len(widest) <= 80, widest  # an 80-column terminal
    assert "…" not in out
    assert re.search(r"^acme-small +day +[\d,]+ +60,000 +80,000 +(soft|hard) ", out, re.M)
    assert out.rstrip().endswith("(it prints a login token)")  # where to look next
