"""Postgres: budgets (the truth), their history, soft-cap alerts, direct ledger writes."""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any, cast

import psycopg
from psycopg.abc import PQGen
from sqlalchemy import Connection, Engine, create_engine, event, func, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from quota._backend import database_errors
from quota.ledger import DIRECT_LOCK, StagedEvent, write_events
from quota.models import (
    Budget,
    BudgetChange,
    DailyUsage,
    FeatureUsage,
    SoftCapAlert,
    UsageEvent,
)
from quota.periods import to_ms
from quota.schema import (
    budget_history,
    budgets,
    ledger,
    ledger_daily,
    ledger_direct,
    soft_cap_alerts,
)
from quota.settings import OutagePolicy, sqlalchemy_url

_BUDGET_COLUMNS = ("enabled", "soft_cap_tokens", "hard_cap_tokens", "period", "outage_policy")


class _BoundedConnection(psycopg.Connection[Any]):
    """A psycopg connection whose every wait on the server is bounded: a server that
    accepts but never answers (SIGSTOPed, a dead network path) fails the call after
    ``wait_seconds`` instead of blocking it. Server-side timeouts cannot do this, as
    they need the server to run."""

    wait_seconds: float = 5.0

    def wait(self, gen: PQGen[Any], interval: float = 0.1, timeout: float | None = None) -> Any:
        try:
            return super().wait(
                gen, interval, timeout if timeout is not None else self.wait_seconds
            )
        except psycopg.errors._WaitTimeout:
            self.pgconn.finish()  # its state is unknown now: never reuse it
            raise psycopg.OperationalError(
                f"Postgres did not answer within {self.wait_seconds:g} s"
            ) from None


def make_engine(url: str, timeout: float | None = None) -> Engine:
    """An engine for ``url``. With ``timeout`` (the gate's), every wait is bounded by it:
    connecting, the pool, each statement on the server and each reply on the client.
    Fork-safe either way: a child never uses its parent's connections."""
    connect_args: dict[str, Any] = {"connect_timeout": 5}
    if timeout is not None:
        ms = int(timeout * 1000)
        connect_args = {
            "connect_timeout": max(1, math.ceil(timeout)),  # libpq takes whole seconds
            "options": f"-c statement_timeout={ms} -c lock_timeout={ms}",
        }
    engine = create_engine(
        sqlalchemy_url(url),
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        pool_timeout=timeout if timeout is not None else 30.0,
        connect_args=connect_args,
    )
    if timeout is not None:
        bounded = cast(
            type[_BoundedConnection],
            type("BoundedConnection", (_BoundedConnection,), {"wait_seconds": timeout}),
        )

        @event.listens_for(engine, "do_connect")
        def _connect(dialect: Any, rec: Any, cargs: Any, cparams: Any) -> Any:
            return bounded.connect(*cargs, **cparams)

    _dispose_in_child(engine)
    return engine


def _dispose_in_child(engine: Engine) -> None:
    """After fork(), the child drops (without closing) the parent's pooled connections:
    SQLAlchemy's recipe for multiprocessing (gunicorn --preload, RQ's fork)."""
    ref = weakref.ref(engine)

    def after_fork() -> None:
        eng = ref()
        if eng is not None:
            eng.dispose(close=False)

    os.register_at_fork(after_in_child=after_fork)


def _budget(row: Any) -> Budget:
    return Budget(**{c: getattr(row, c) for c in _BUDGET_COLUMNS})


class Store:
    """The Postgres side of the gate. Every method translates backend errors."""

    def __init__(self, engine: Engine, prefix: str) -> None:
        self.engine = engine
        #: The deployment's key prefix: the ledger rows it writes and reads are its own.
        self.prefix = prefix

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

    def outage_policies(self) -> dict[str, OutagePolicy]:
        """The budgets that name their own outage policy."""
        query = select(budgets.c.port_id, budgets.c.outage_policy).where(
            budgets.c.outage_policy.is_not(None)
        )
        with database_errors(), self.engine.connect() as conn:
            return {row.port_id: row.outage_policy for row in conn.execute(query)}

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

    def insert_event(self, event: UsageEvent, dedupe_window: timedelta) -> bool:
        """Write one event straight into the ledger (the path used when Redis is down,
        hung or timed out), and note it in ``ledger_direct`` so that the drain drops its
        stream twin if the call ran in Redis after all.

        Returns False, writing nothing, when the event id is in the ledger already (a
        drained twin, or another thread's fallback write of the same commit) or its
        request id was recorded within ``dedupe_window``. Rollups are updated as for
        drained events.
        """
        with database_errors(), self.engine.begin() as conn:
            # Against drain batches (shared) and other direct writes: each sees the
            # others' ids once it holds the lock.
            conn.execute(select(func.pg_advisory_xact_lock(DIRECT_LOCK)))
            twin = conn.execute(
                select(ledger.c.event_id).where(ledger.c.event_id == event.event_id).limit(1)
            ).first()
            if twin is not None:
                return False
            if event.request_id is not None:
                seen = conn.execute(
                    select(ledger.c.event_id)
                    .where(
                        ledger.c.key_prefix == self.prefix,
                        ledger.c.port_id == event.port_id,
                        ledger.c.request_id == event.request_id,
                        ledger.c.occurred_at >= event.occurred_at - dedupe_window,
                    )
                    .limit(1)
                ).first()
                if seen is not None:
                    return False
            self._write_direct(conn, [event])
        return True

    def unreconciled(self, event_id: str) -> None:
        """Have the drain job reconcile this direct row's port again."""
        stmt = ledger_direct.update().where(ledger_direct.c.event_id == event_id)
        with database_errors(), self.engine.begin() as conn:
            conn.execute(stmt.values(reconciled=False))

    def insert_events(self, events: Sequence[UsageEvent]) -> int:
        """`insert_event` for many at once (a gate's journal after Redis lost its data),
        by event id only: one of these that the drain stored already is left out.
        Returns how many were written."""
        if not events:
            return 0
        with database_errors(), self.engine.begin() as conn:
            conn.execute(select(func.pg_advisory_xact_lock(DIRECT_LOCK)))
            seen: set[str] = set()
            ids = [e.event_id for e in events]
            for i in range(0, len(ids), 10_000):
                seen.update(
                    conn.execute(
                        text("SELECT event_id::text FROM ledger WHERE event_id = ANY(:ids)"),
                        {"ids": ids[i : i + 10_000]},
                    ).scalars()
                )
            fresh = [e for e in events if e.event_id not in seen]
            self._write_direct(conn, fresh)
        return len(fresh)

    def _write_direct(self, conn: Connection, events: Sequence[UsageEvent]) -> None:
        """Ledger rows (with rollups) and ledger_direct rows for ``events``."""
        if not events:
            return
        staged = [
            StagedEvent(
                event_id=e.event_id,
                port_id=e.port_id,
                user_id=e.user_id,
                feature=e.feature,
                provider=e.provider,
                model=e.model,
                input_tokens=e.input_tokens,
                output_tokens=e.output_tokens,
                request_id=e.request_id,
                at_ms=to_ms(e.occurred_at),
                source="direct",
                stream_ms=None,
                stream_seq=None,
            )
            for e in events
        ]
        driver = conn.connection.driver_connection
        assert isinstance(driver, psycopg.Connection)
        write_events(driver, staged, self.prefix)
        conn.execute(
            insert(ledger_direct),
            [
                {
                    "reconciled": False,
                    "key_prefix": self.prefix,
                    "event_id": e.event_id,
                    "port_id": e.port_id,
                    "request_id": e.request_id,
                    "occurred_at": e.occurred_at,
                }
                for e in events
            ],
        )

    def usage_by_day(self, port: str, since: date) -> list[tuple[str, str, date, int]]:
        """(port, feature, day, tokens) from the daily rollups, from ``since`` on."""
        d = ledger_daily.c
        query = (
            select(d.port_id, d.feature, d.day, func.sum(d.total_tokens))
            .where(d.key_prefix == self.prefix, d.port_id == port, d.day >= since)
            .group_by(d.port_id, d.feature, d.day)
        )
        with database_errors(), self.engine.connect() as conn:
            return [(p, f, day, int(t)) for p, f, day, t in conn.execute(query)]

    def breakdown(self, port: str, since: date) -> list[FeatureUsage]:
        """Tokens and calls per feature from ``since`` on, largest first (daily rollups)."""
        d = ledger_daily.c
        query = (
            select(d.feature, func.sum(d.total_tokens), func.sum(d.calls))
            .where(d.key_prefix == self.prefix, d.port_id == port, d.day >= since)
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
            .where(d.key_prefix == self.prefix, d.port_id == port, d.day.between(start, end))
            .group_by(d.day, d.feature)
            .order_by(d.day, d.feature)
        )
        with database_errors(), self.engine.connect() as conn:
            return [DailyUsage(day, f, int(t), int(c)) for day, f, t, c in conn.execute(query)]
