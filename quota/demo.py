"""`quota demo`: worker processes calling "LLMs" through the gate, then a report.

Uses only its own key prefix and database (./scripts/demo sets both), and resets them
first, so it can be run again and again without touching anyone's data.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import text

from quota.drain import Drainer
from quota.gate import Gate
from quota.housekeeping import forget_prefix, require_own
from quota.models import Budget
from quota.reconcile import Reconciler
from quota.schema import TABLES
from quota.settings import Settings
from quota.tables import compact
from quota.tables import console as cli_console
from quota.tables import table as make_table

THREADS = 4
FEATURES = {  # feature: (typical input tokens, typical output tokens)
    "ocr": (1_500, 300),
    "chat": (800, 400),
    "summarize": (3_000, 500),
    "classify": (300, 20),
}


@dataclass(frozen=True)
class DemoPort:
    port_id: str
    budget: Budget
    weight: int  # share of the traffic


def demo_ports(count: int) -> list[DemoPort]:
    """A mix: one small port driven past its soft cap into its hard cap, one disabled,
    and tenants with growing caps (the first reaches its hard cap, the last stays ok)."""
    ports = [
        DemoPort(
            "acme-small",
            Budget(enabled=True, soft_cap_tokens=60_000, hard_cap_tokens=80_000, period="day"),
            3,
        ),
        DemoPort("free-tier", Budget(enabled=False), 2),
    ]
    for i in range(max(count - 2, 0)):
        hard = 8_000_000 * (i + 1)
        ports.append(
            DemoPort(
                f"tenant-{i + 1:02d}",
                Budget(
                    enabled=True,
                    soft_cap_tokens=hard * 6 // 10,
                    hard_cap_tokens=hard,
                    period=("day", "week", "month")[i % 3],
                ),
                2,
            )
        )
    return ports[:count]


def _tokens(rng: random.Random, mean: int) -> int:
    return max(1, int(rng.lognormvariate(0, 0.5) * mean))


def _worker(
    settings: Settings,
    ports: list[DemoPort],
    deadline: float,
    seed: int,
    progress: mp.sharedctypes.Synchronized[int],
    out: mp.Queue[Counter[str]],
) -> None:
    # Alerts show in the report; a warning line per port per process would drown it.
    logging.getLogger("quota").setLevel(logging.ERROR)
    gate = Gate(settings)
    totals: Counter[str] = Counter()
    lock = threading.Lock()
    weights = [p.weight for p in ports]

    def run(n: int) -> None:
        rng = random.Random(seed * 100 + n)
        mine: Counter[str] = Counter()
        while time.monotonic() < deadline:
            port = rng.choices(ports, weights)[0].port_id
            feature = rng.choice(list(FEATURES))
            mean_in, mean_out = FEATURES[feature]
            estimate = int((mean_in + mean_out) * 1.5)
            d = gate.reserve(port, estimate, feature, user_id=f"user-{rng.randint(1, 20)}")
            mine["decisions"] += 1
            mine["gate_calls"] += 1
            if not d.ok or d.reservation_id is None:
                mine[f"refused:{port}:{d.reason}"] += 1
                continue
            tin, tout = _tokens(rng, mean_in), _tokens(rng, mean_out)
            mine["gate_calls"] += 1
            if rng.random() < 0.03:  # the LLM call failed: give the tokens back
                gate.release(d.reservation_id)
                continue
            gate.commit(
                d.reservation_id,
                input_tokens=tin,
                output_tokens=tout,
                provider="openai",
                model=rng.choice(["gpt-4o", "gpt-4o-mini"]),
            )
            mine["tokens"] += tin + tout
            mine["calls"] += 1
            if mine["decisions"] % 50 == 0:
                with progress.get_lock():
                    progress.value += 50
        with lock:
            totals.update(mine)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    busy = time.monotonic() - started
    gate.close()
    # Rates per process (over its own running time, start-up excluded) add up.
    totals["decisions_per_s"] = int(totals["decisions"] / busy)
    totals["calls_per_s"] = int(totals["gate_calls"] / busy)
    out.put(totals)


def _reset(gate: Gate, ports: list[DemoPort]) -> None:
    """Forget the previous demo run: its keys (own prefix only) and its rows (own database)."""
    forget_prefix(gate.redis, gate.settings.key_prefix)
    with gate.store.engine.begin() as conn:
        conn.execute(text("TRUNCATE " + ", ".join(TABLES)))
    for p in ports:
        gate.set_budget(p.port_id, updated_by="demo", **p.budget.model_dump())


#: Where `./scripts/demo serve` serves the dashboard over the demo's data.
SERVE_URL = "http://127.0.0.1:8000/"


def run(settings: Settings, *, processes: int, seconds: float, ports: int) -> None:
    console = cli_console()
    require_own(settings, "demo")
    demo = demo_ports(ports)
    with Gate(settings) as gate:
        _reset(gate, demo)
        console.print(
            f"[bold]quota demo[/]: {processes} worker processes x {THREADS} threads, "
            f"{len(demo)} ports, {seconds:.0f} s, Redis {settings.redis_url}"
        )
        ctx = mp.get_context("spawn")
        progress_value = ctx.Value("q", 0)
        out: mp.Queue[Counter[str]] = ctx.Queue()
        deadline = time.monotonic() + seconds + 2.0  # spawn start-up is not counted below
        procs = [
            ctx.Process(target=_worker, args=(settings, demo, deadline, i, progress_value, out))
            for i in range(processes)
        ]
        for p in procs:
            p.start()
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[decisions]:>9,} decisions"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task(
                "workers calling LLMs", total=deadline - time.monotonic(), decisions=0
            )
            start = time.monotonic()
            while time.monotonic() < deadline:
                time.sleep(0.2)
                bar.update(task, completed=time.monotonic() - start, decisions=progress_value.value)
        totals: Counter[str] = Counter()
        for _ in procs:
            totals.update(out.get(timeout=60))
        for p in procs:
            p.join()
        _report(console, gate, demo, totals)
        _ledger_report(console, gate, demo)


def _report(console: Console, gate: Gate, demo: list[DemoPort], totals: Counter[str]) -> None:
    numbers = ("used", "soft cap", "hard cap", "refused")
    table = make_table("Ports after the run", "port", "period", *numbers[:3], "state",
                       numbers[3], "alert", right=numbers)  # fmt: skip
    style = {"ok": "green", "soft": "yellow", "hard": "red"}
    for p in demo:
        s = gate.status(p.port_id)
        refused = sum(n for k, n in totals.items() if k.startswith(f"refused:{p.port_id}:"))
        alerts = gate.alerts(p.port_id)
        table.add_row(
            p.port_id,
            s.period,
            compact(s.used_tokens),  # three figures: the table fits 80 columns
            compact(s.soft_cap_tokens),
            compact(s.hard_cap_tokens),
            f"[{style[s.state]}]{s.state}[/]" if s.enabled else "off",
            f"{refused:,}",
            "yes" if alerts else "-",
        )
    console.print(table)
    reasons: Counter[str] = Counter()
    for key, n in totals.items():
        if key.startswith("refused:"):
            reasons[key.rsplit(":", 1)[1]] += n
    console.print(
        f"{totals['decisions']:,} reserve decisions: [bold]{totals['decisions_per_s']:,} "
        f"decisions/s[/] across all workers ({totals['calls_per_s']:,} gate calls/s with "
        "commits and releases)"
    )
    console.print(f"{totals['calls']:,} calls committed, {totals['tokens']:,} tokens")
    console.print(
        "refusals by reason: "
        + (", ".join(f"{r} {n:,}" for r, n in sorted(reasons.items())) or "none")
    )


def _ledger_report(console: Console, gate: Gate, demo: list[DemoPort]) -> None:
    """Drain the streams into Postgres, read the breakdown back, reconcile."""
    drainer = Drainer(gate.settings, gate.redis, gate.store.engine)
    started = time.monotonic()
    drained = sum(
        drainer.drain_shard(s, max_seconds=60).inserted for s in range(gate.settings.shards)
    )
    console.print(
        f"drained {drained:,} usage events into the Postgres ledger in "
        f"{time.monotonic() - started:.2f} s"
    )
    table = make_table("Per-feature breakdown, current period (from Postgres)", "port",
                       "feature", "tokens", "calls", right=["tokens", "calls"])  # fmt: skip
    for p in demo:
        for i, f in enumerate(gate.breakdown(p.port_id)):
            table.add_row(
                p.port_id if i == 0 else "",
                f.feature,
                f"{f.tokens:,}",
                f"{f.calls:,}",
                end_section=False,
            )
        table.add_section()
    console.print(table)
    report = Reconciler(gate.settings, gate.redis, gate.store.engine, drainer).run()
    console.print(
        f"reconciliation: {report.ports_checked} ports checked against the ledger, "
        f"{report.ports_drifted} drifted, {report.tokens_corrected:,} tokens corrected, "
        f"in {report.seconds:.2f} s"
    )
    console.print(
        "See these ports in a browser: [bold]./scripts/demo serve[/], then open "
        f"[bold]{SERVE_URL}[/] (it prints a login token)"
    )
