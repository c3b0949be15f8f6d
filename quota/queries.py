"""The gate's Postgres reads and budget writes, written once for both gates.

Each operation is a procedure: a generator that yields SQLAlchemy Core statements and
is sent each one's rows (empty for a statement that returns none), then returns its
result. It does no I/O: `Store` drives it on a sync engine, `AsyncStore` on an async
one, each inside one connection (a transaction for a write).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from datetime import date
from typing import Any, TypeVar

from sqlalchemy import Executable, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from quota.models import (
    Budget,
    BudgetChange,
    DailyUsage,
    FeatureUsage,
    ModelUsage,
    SoftCapAlert,
)
from quota.schema import (
    budget_history,
    budgets,
    deployments,
    ledger_daily,
    ledger_direct,
    soft_cap_alerts,
)
from quota.settings import OutagePolicy

T = TypeVar("T")
Rows = Sequence[Any]  # SQLAlchemy Rows: attribute access and unpacking
Procedure = Generator[Executable, Rows, T]

_BUDGET_COLUMNS = (
    "enabled", "soft_cap_tokens", "hard_cap_tokens", "period", "outage_policy", "rate_limits",
    "feature_caps",
)  # fmt: skip


def budget_of(row: Any) -> Budget:
    """A budgets row's Budget."""
    return Budget(**{c: getattr(row, c) for c in _BUDGET_COLUMNS})


def load_budget(port: str) -> Procedure[tuple[Budget, int]]:
    """The stored budget and its version; the default budget (version 0) if none."""
    rows = yield select(budgets).where(budgets.c.port_id == port)
    if not rows:
        return Budget(), 0
    return budget_of(rows[0]), rows[0].version


def save_budget(
    port: str, changes: dict[str, Any], updated_by: str
) -> Procedure[tuple[Budget, int]]:
    """Merge ``changes`` into the stored budget, validate, upsert, log history (a write:
    run in one transaction).

    Writers of one port are serialised by a transaction-scoped advisory lock, so two
    concurrent partial updates both land (neither merges from a stale row). Invalid
    input raises `InvalidBudget` inside the transaction: nothing is written.
    """
    yield select(func.pg_advisory_xact_lock(func.hashtext("budget:" + port)))
    rows = yield select(budgets).where(budgets.c.port_id == port)
    row = rows[0] if rows else None
    before = budget_of(row) if row is not None else None
    after = (before or Budget()).merged(**changes)
    version = (row.version if row is not None else 0) + 1
    values = after.model_dump()
    stmt = pg_insert(budgets).values(
        port_id=port, version=version, updated_by=updated_by, updated_at=func.now(), **values
    )
    yield stmt.on_conflict_do_update(
        index_elements=[budgets.c.port_id],
        set_={**values, "version": version, "updated_by": updated_by, "updated_at": func.now()},
    )
    yield insert(budget_history).values(
        port_id=port,
        changed_by=updated_by,
        changed_at=func.now(),
        before=before.model_dump() if before else None,
        after=values,
    )
    return after, version


def outage_policies() -> Procedure[dict[str, OutagePolicy]]:
    """The budgets that name their own outage policy."""
    rows = yield select(budgets.c.port_id, budgets.c.outage_policy).where(
        budgets.c.outage_policy.is_not(None)
    )
    return {row.port_id: row.outage_policy for row in rows}


def ports_with_budgets(*, enabled_only: bool = False) -> Procedure[list[str]]:
    query = select(budgets.c.port_id).order_by(budgets.c.port_id)
    if enabled_only:
        query = query.where(budgets.c.enabled)
    rows = yield query
    return [row.port_id for row in rows]


def enabled_caps() -> Procedure[dict[str, tuple[int, int]]]:
    """Every enabled budget's (soft, hard) cap by port: the dashboard's ranking."""
    b = budgets.c
    rows = yield select(b.port_id, b.soft_cap_tokens, b.hard_cap_tokens).where(b.enabled)
    return {r.port_id: (int(r.soft_cap_tokens), int(r.hard_cap_tokens)) for r in rows}


def budget_history_of(port: str) -> Procedure[list[BudgetChange]]:
    rows = yield (
        select(budget_history).where(budget_history.c.port_id == port).order_by(budget_history.c.id)
    )
    return [
        BudgetChange(
            port_id=r.port_id,
            changed_by=r.changed_by,
            changed_at=r.changed_at,
            before=Budget(**r.before) if r.before else None,
            after=Budget(**r.after),
        )
        for r in rows
    ]


def save_alert(alert: SoftCapAlert) -> Procedure[None]:
    yield (
        pg_insert(soft_cap_alerts)
        .values(
            port_id=alert.port_id,
            period=alert.period,
            period_start=alert.period_start,
            used_tokens=alert.used_tokens,
            soft_cap_tokens=alert.soft_cap_tokens,
            created_at=func.now(),
        )
        .on_conflict_do_nothing()
    )


def alerts_of(port: str) -> Procedure[list[SoftCapAlert]]:
    rows = yield (
        select(soft_cap_alerts)
        .where(soft_cap_alerts.c.port_id == port)
        .order_by(soft_cap_alerts.c.period_start)
    )
    return [
        SoftCapAlert(r.port_id, r.period, r.period_start, r.used_tokens, r.soft_cap_tokens)
        for r in rows
    ]


def unreconciled(event_id: str) -> Procedure[None]:
    """Have the drain job reconcile this direct row's port again (a write)."""
    yield (
        ledger_direct.update().where(ledger_direct.c.event_id == event_id).values(reconciled=False)
    )


def usage_by_day(
    prefix: str, port: str, since: date
) -> Procedure[list[tuple[str, str, date, int]]]:
    """(port, feature, day, tokens) from the daily rollups, from ``since`` on."""
    d = ledger_daily.c
    rows = yield (
        select(d.port_id, d.feature, d.day, func.sum(d.total_tokens))
        .where(d.key_prefix == prefix, d.port_id == port, d.day >= since)
        .group_by(d.port_id, d.feature, d.day)
    )
    return [(p, f, day, int(t)) for p, f, day, t in rows]


def breakdown(prefix: str, port: str, since: date) -> Procedure[list[FeatureUsage]]:
    """Tokens and calls per feature from ``since`` on, largest first (daily rollups)."""
    d = ledger_daily.c
    rows = yield (
        select(d.feature, func.sum(d.total_tokens), func.sum(d.calls))
        .where(d.key_prefix == prefix, d.port_id == port, d.day >= since)
        .group_by(d.feature)
        .order_by(func.sum(d.total_tokens).desc(), d.feature)
    )
    return [FeatureUsage(f, int(t), int(c)) for f, t, c in rows]


def by_model(prefix: str, port: str, since: date) -> Procedure[list[ModelUsage]]:
    """Tokens and calls per provider and model from ``since`` on, largest first."""
    d = ledger_daily.c
    rows = yield (
        select(d.provider, d.model, func.sum(d.total_tokens), func.sum(d.calls))
        .where(d.key_prefix == prefix, d.port_id == port, d.day >= since)
        .group_by(d.provider, d.model)
        .order_by(func.sum(d.total_tokens).desc(), d.provider, d.model)
    )
    return [ModelUsage(p, m, int(t), int(c)) for p, m, t, c in rows]


def daily(prefix: str, port: str, start: date, end: date) -> Procedure[list[DailyUsage]]:
    """Tokens and calls per UTC day and feature, ``start`` ≤ day ≤ ``end``."""
    d = ledger_daily.c
    rows = yield (
        select(d.day, d.feature, func.sum(d.total_tokens), func.sum(d.calls))
        .where(d.key_prefix == prefix, d.port_id == port, d.day.between(start, end))
        .group_by(d.day, d.feature)
        .order_by(d.day, d.feature)
    )
    return [DailyUsage(day, f, int(t), int(c)) for day, f, t, c in rows]


def claim_shards(prefix: str, shards: int) -> Procedure[int]:
    """Record ``shards`` for the deployment unless a count is recorded; the recorded
    count. (A deployment from before counts were recorded ran with the QUOTA_SHARDS its
    processes have: the first to ask records it.)"""
    yield (
        pg_insert(deployments)
        .values(key_prefix=prefix, shards=shards, changed_at=func.now())
        .on_conflict_do_nothing()
    )
    rows = yield select(deployments.c.shards).where(deployments.c.key_prefix == prefix)
    return int(next(iter(rows))[0])


def set_shards(prefix: str, shards: int) -> Procedure[None]:
    """Record a changed shard count (quota/shards.py `reshard`)."""
    yield (
        pg_insert(deployments)
        .values(key_prefix=prefix, shards=shards, changed_at=func.now())
        .on_conflict_do_update(
            index_elements=[deployments.c.key_prefix],
            set_={"shards": shards, "changed_at": func.now()},
        )
    )
