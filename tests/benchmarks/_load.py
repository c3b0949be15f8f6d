"""What the HTTP sections share: a server process group stopped, and `wrk` (a C load
generator, Debian's package) run and read."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's session (its workers with it), SIGKILL after 15 s."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    assert m, text
    return float(m[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m[2]]


def wrk(url: str, seconds: float, script: Path, connections: int) -> tuple[float, float, float]:
    """Requests/s, p50 and p99 per request in ms; any non-2xx answer is an error."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script),
         url],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    ).stdout  # fmt: skip
    if "Non-2xx" in out:
        raise RuntimeError(f"refused or failed requests under load:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    # The "Latency Distribution" block: lines that are a percentile and a latency alone.
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)$", out, re.M)[1])  # type: ignore[index]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)$", out, re.M)[1])  # type: ignore[index]
    return rps, p50, p99
