"""What the dashboard's pages show, read from Redis snapshots (counters, stream
positions, the last reconciliation's report) and Postgres's budgets and daily rollups:
never the ledger itself, so a page costs the same with 10 rows or 10 M."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from quota.async_gate import AsyncGate
from quota.entries import stream_id
from quota.keys import KeyLayout
from quota.models import (
    Budget,
    BudgetChange,
    FeatureUsage,
    ModelUsage,
    RateState,
    SoftCapAlert,
    Status,
)
from quota.serve import refusals

#: Ports the overview lists, closest to their hard caps first.
TOP = 50
#: Days the port page's chart covers at least.
CHART_DAYS = 14


@dataclass(frozen=True)
class PortRow:
    port: str
    used: int
    reserved: int
    soft: int
    hard: int

    @property
    def share(self) -> float:
        """Used tokens over the hard cap (a port with a zero cap: full)."""
        return self.used / self.hard if self.hard else 1.0

    @property
    def state(self) -> str:
        return "hard" if self.used >= self.hard else "soft" if self.used > self.soft else "ok"


@dataclass(frozen=True)
class Lag:
    """The drain's backlog: events in Redis not yet in the ledger."""

    shards: int
    waiting_shards: int
    undrained: int
    oldest_age_s: float | None


@dataclass(frozen=True)
class Overview:
    read_at: datetime
    enabled: int
    top: list[PortRow]
    soft_breaches: int
    hard_breaches: int
    ports_holding: int
    held_tokens: int
    refusals: dict[str, tuple[int, int]]  # reason -> (today, last 7 days), via the API
    lag: Lag
    reconcile: dict[str, Any] | None
    breakers: dict[str, str]


@dataclass(frozen=True)
class Day:
    day: date
    tokens: int


@dataclass(frozen=True)
class PortPage:
    port: str
    read_at: datetime
    budget: Budget
    status: Status
    rate: tuple[RateState, ...]
    features: list[FeatureUsage]
    models: list[ModelUsage]
    days: list[Day]
    history: list[BudgetChange]
    alerts: list[SoftCapAlert]
    lag: Lag
    caps: dict[str, tuple[int, int]] = field(default_factory=dict)  # feature -> (used, cap)


async def redis_now(gate: AsyncGate) -> datetime:
    sec, usec = await gate.redis.time()
    return datetime.fromtimestamp(int(sec) + int(usec) / 1e6, UTC)


async def overview(gate: AsyncGate) -> Overview:
    """Every enabled port's standing (one check_many: a call per shard), ranked."""
    caps = await gate.db.enabled_caps()
    ports = sorted(caps)
    decisions = await gate.check_many((p, 0) for p in ports)
    rows = [
        PortRow(p, d.used_tokens, d.reserved_tokens, caps[p][0], caps[p][1])
        for p, d in zip(ports, decisions, strict=True)
        if not d.degraded
    ]
    rows.sort(key=lambda r: (-r.share, r.port))
    now = await redis_now(gate)
    return Overview(
        read_at=now,
        enabled=len(ports),
        top=rows[:TOP],
        soft_breaches=sum(r.state == "soft" for r in rows),
        hard_breaches=sum(r.state == "hard" for r in rows),
        ports_holding=sum(r.reserved > 0 for r in rows),
        held_tokens=sum(r.reserved for r in rows),
        refusals=await refusals.recent(gate, now.date()),
        lag=await drain_lag(gate),
        reconcile=await last_reconcile(gate),
        breakers=gate.breaker_states(),
    )


async def port_page(gate: AsyncGate, port: str) -> PortPage:
    budget = await gate.get_budget(port)
    status = await gate.status(port)
    decision = await gate.check(port, 0)
    since = status.period_start.date()
    today = (await redis_now(gate)).date()
    # The chart spans the period, and at least two weeks (a day's period is one bar).
    first = min(since, today - timedelta(CHART_DAYS - 1))
    daily = await gate.daily_usage(port, first, today)
    per_day: dict[date, int] = {}
    for d in daily:
        per_day[d.day] = per_day.get(d.day, 0) + d.tokens
    days = [
        Day(first + timedelta(n), per_day.get(first + timedelta(n), 0))
        for n in range((today - first).days + 1)
    ]
    features = await gate.db.breakdown(port, since)
    used_by_feature = {f.feature: f.tokens for f in features}
    return PortPage(
        port=status.port_id,
        read_at=await redis_now(gate),
        budget=budget,
        status=status,
        rate=decision.rate,
        features=features,
        models=await gate.db.by_model(port, since),
        days=days,
        history=list(reversed(await gate.budget_history(port))),
        alerts=list(reversed(await gate.alerts(port))),
        lag=await drain_lag(gate),
        caps={f: (used_by_feature.get(f, 0), cap) for f, cap in budget.feature_caps.items()},
    )


async def drain_lag(gate: AsyncGate) -> Lag:
    """Every shard's backlog in two pipelined round trips (per primary), not a call per
    shard: XLEN and XINFO GROUPS, then the oldest undrained entry of the waiting ones."""
    settings = gate.settings
    layout = KeyLayout(settings.key_prefix, settings.shards)
    keys = [layout.stream(s) for s in range(settings.shards)]
    pipe = gate.redis.pipeline(transaction=False)
    for key in keys:
        pipe.xlen(key)
        pipe.xinfo_groups(key)
    replies = await pipe.execute(raise_on_error=False)
    waiting: list[tuple[str, int, str | None]] = []  # key, undrained, last delivered
    for n, key in enumerate(keys):
        length, groups = replies[2 * n], replies[2 * n + 1]
        if isinstance(length, Exception) or not length:
            continue
        group = _ledger_group(groups)
        if group is None:  # never drained: all of it waits
            waiting.append((key, int(length), None))
            continue
        pending, behind = int(group["pending"]), int(group.get("lag") or 0)
        if pending or behind:
            waiting.append((key, pending + behind, str(group["last-delivered-id"])))
    oldest = await _oldest(gate, waiting) if waiting else None
    age = None
    if oldest is not None:
        now = await redis_now(gate)
        age = max(0.0, now.timestamp() - oldest / 1000)
    return Lag(len(keys), len(waiting), sum(w[1] for w in waiting), age)


def _ledger_group(groups: Any) -> dict[str, Any] | None:
    if isinstance(groups, Exception):
        return None
    return next((g for g in groups if g["name"] == "ledger"), None)


async def _oldest(gate: AsyncGate, waiting: Sequence[tuple[str, int, str | None]]) -> int | None:
    """The ms of the oldest undrained entry: the first pending one, else the first
    after the group's last delivered."""
    pipe = gate.redis.pipeline(transaction=False)
    for key, _, last in waiting:
        if last is None:
            pipe.xrange(key, count=1)
        else:
            pipe.xpending(key, "ledger")
            pipe.xrange(key, min=f"({last}", count=1)
    replies = iter(await pipe.execute(raise_on_error=False))
    stamps = []
    for _, _, last in waiting:
        first = next(replies)
        ids: list[str] = []
        if last is None:
            ids = [e[0] for e in first] if isinstance(first, list) else []
        else:
            after = next(replies)
            if isinstance(first, dict) and first.get("min"):
                ids.append(str(first["min"]))
            elif isinstance(after, list) and after:
                ids.append(after[0][0])
        stamps += [stream_id(i)[0] for i in ids]
    return min(stamps) if stamps else None


async def last_reconcile(gate: AsyncGate) -> dict[str, Any] | None:
    """The last full reconciliation's report (kept by quota/reconcile.py), or None."""
    layout = KeyLayout(gate.settings.key_prefix, gate.settings.shards)
    raw = await gate.redis.get(layout.last_reconcile)
    return json.loads(raw) if raw else None
