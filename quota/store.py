"""Postgres: budgets (the truth), their history, soft-cap alerts, direct ledger writes."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from quota._backend import database_errors
from quota.ledger import StagedEvent, write_events
from quota.models import (
    Budget,
    BudgetChange,
    DailyUsage,
    FeatureUsage,
    SoftCapAlert,
    UsageEvent,
)
from quota.periods import to_ms
from quota.schema import budget_history, budgets, ledger, ledger_daily, soft_cap_alerts
from quota.settings import sqlalchemy_url

_BUDGET_COLUMNS = ("enabled", "soft_cap_tokens", "hard_cap_tokens", "period")


def make_engine(url: str) -> Engine:
    # A short connect timeout: the gate's fallback path must fail fast, not hang.
    return create_engine(
        sqlalchemy_url(url),
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        connect_args={"connect_timeout": 5},
    )


def _budget(row: Any) -> Budget:
    return Budget(**{c: getattr(row, c) for c in _BUDGET_COLUMNS})


class Store:
    """The Postgres side of the gate. Every method translates backend errors."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def load_budget(self, port: str) -> tuple[Budget, int]:
        """The stored budget and its version; the default budget (version 0) if none."""
        with database_errors(), self.engine.connect() as conn:
            row = conn.execute(select(budgets).where(budgets.c.port_id == port)).first()
        if row is None:
            return Budget(), 0
        return _budget(row), row.version

    def save_budget(
        self, port: str, changes: dict[str, Any], updated_by: str
    ) -> tuple[Budget, int]:
        """Merge ``changes`` into the stored budget, validate, upsert, log history.

        Writers of one port are serialised by a transaction-scoped advisory lock, so
        two concurrent partial updates both land (neither merges from a stale row).
        Invalid input raises `InvalidBudget` inside the transaction: nothing is written.
        """
        with database_errors(), self.engine.begin() as conn:
            conn.execute(select(func.pg_advisory_xact_lock(func.hashtext("budget:" + port))))
            row = conn.execute(select(budgets).where(budgets.c.port_id == port)).first()
            before = _budget(row) if row is not None else None
            after = (before or Budget()).merged(**changes)
            version = (row.version if row is not None else 0) + 1
            values = after.model_dump()
            stmt = pg_insert(budgets).values(
                port_id=port,
                version=version,
                updated_by=updated_by,
                updated_at=func.now(),
                **values,
            )
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[budgets.c.port_id],
                    set_={
                        **values,
                        "version": version,
                        "updated_by": updated_by,
                        "updated_at": func.now(),
                    },
                )
            )
            conn.execute(
                insert(budget_history).values(
                    port_id=port,
                    changed_by=updated_by,
                    changed_at=func.now(),
                    before=before.model_dump() if before else None,
                    after=values,
                )
            )
        return after, version

    def ports_with_budgets(self, *, enabled_only: bool = False) -> list[str]:
        query = select(budgets.c.port_id).order_by(budgets.c.port_id)
        if enabled_only:
            query = query.where(budgets.c.enabled)
        with database_errors(), self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def budget_history(self, port: str) -> list[BudgetChange]:
        query = (
            select(budget_history)
            .where(budget_history.c.port_id == port)
            .order_by(budget_history.c.id)
        )
        with database_errors(), self.engine.connect() as conn:
            rows = conn.execute(query).all()
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

    def save_alert(self, alert: SoftCapAlert) -> None:
        stmt = pg_insert(soft_cap_alerts).values(
            port_id=alert.port_id,
            period=alert.period,
            period_start=alert.period_start,
            used_tokens=alert.used_tokens,
            soft_cap_tokens=alert.soft_cap_tokens,
            created_at=func.now(),
        )
        with database_errors(), self.engine.begin() as conn:
            conn.execute(stmt.on_conflict_do_nothing())

    def alerts(self, port: str) -> list[SoftCapAlert]:
        query = (
            select(soft_cap_alerts)
            .where(soft_cap_alerts.c.port_id == port)
            .order_by(soft_cap_alerts.c.period_start)
        )
        with database_errors(), self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            SoftCapAlert(r.port_id, r.period, r.period_start, r.used_tokens, r.soft_cap_tokens)
            for r in rows
        ]

    def insert_event(self, event: UsageEvent, source: str, dedupe_window: timedelta) -> bool:
        """Write one event straight into the ledger (the path used when Redis is down).

        Returns False, writing nothing, when the request id was already recorded
        within ``dedupe_window``. Rollups are updated as for drained events.
        """
        with database_errors(), self.engine.begin() as conn:
            if event.request_id is not None:
                # Serialise writers of one request id so the existence check holds.
                conn.execute(
                    select(
                        func.pg_advisory_xact_lock(
                            func.hashtext(f"req:{event.port_id}:{event.request_id}")
                        )
                    )
                )
                seen = conn.execute(
                    select(ledger.c.event_id)
                    .where(
                        ledger.c.port_id == event.port_id,
                        ledger.c.request_id == event.request_id,
                        ledger.c.occurred_at >= event.occurred_at - dedupe_window,
                    )
                    .limit(1)
                ).first()
                if seen is not None:
                    return False
            staged = StagedEvent(
                event_id=event.event_id,
                port_id=event.port_id,
                user_id=event.user_id,
                feature=event.feature,
                provider=event.provider,
                model=event.model,
                input_tokens=event.input_tokens,
                output_tokens=event.output_tokens,
                request_id=event.request_id,
                at_ms=to_ms(event.occurred_at),
                source=source,
                stream_ms=None,
                stream_seq=None,
            )
            driver = conn.connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            write_events(driver, [staged])
        return True

    def breakdown(self, port: str, since: date) -> list[FeatureUsage]:
        """Tokens and calls per feature from ``since`` on, largest first (daily rollups)."""
        d = ledger_daily.c
        query = (
            select(d.feature, func.sum(d.total_tokens), func.sum(d.calls))
            .where(d.port_id == port, d.day >= since)
            .group_by(d.feature)
            .order_by(func.sum(d.total_tokens).desc(), d.feature)
        )
        with database_errors(), self.engine.connect() as conn:
            return [FeatureUsage(f, int(t), int(c)) for f, t, c in conn.execute(query)]

    def daily(self, port: str, start: date, end: date) -> list[DailyUsage]:
        """Tokens and calls per UTC day and feature, ``start`` ≤ day ≤ ``end``."""
        d = ledger_daily.c
        query = (
            select(d.day, d.feature, func.sum(d.total_tokens), func.sum(d.calls))
            .where(d.port_id == port, d.day.between(start, end))
            .group_by(d.day, d.feature)
            .order_by(d.day, d.feature)
        )
        with database_errors(), self.engine.connect() as conn:
            return [DailyUsage(day, f, int(t), int(c)) for day, f, t, c in conn.execute(query)]
