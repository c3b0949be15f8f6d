"""Postgres for the sync gate: budgets (the truth), their history, soft-cap alerts and
reports through quota/queries.py's procedures, and the direct ledger writes of the
usage path past Redis (both gates run that one on threads)."""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any, TypeVar, cast

import psycopg
from psycopg.abc import PQGen
from sqlalchemy import Connection, Engine, create_engine, event, func, insert, select, text

from quota import queries as q
from quota._backend import database_errors
from quota._exceptions import ShardMismatch
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
from quota.queries import Procedure
from quota.schema import ledger, ledger_direct
from quota.settings import OutagePolicy, sqlalchemy_url

T = TypeVar("T")


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
            raise unanswered(self.pgconn, self.wait_seconds) from None


def unanswered(pgconn: Any, seconds: float) -> psycopg.OperationalError:
    """A bounded wait ran out: the connection is closed (its state is unknown, so it is
    never reused) and this is the error to raise."""
    pgconn.finish()
    return psycopg.OperationalError(f"Postgres did not answer within {seconds:g} s")


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


def run(conn: Connection, proc: Procedure[T]) -> T:
    """Drive a procedure of quota/queries.py on ``conn``."""
    stmt = next(proc)  # every procedure runs at least one statement
    while True:
        result = conn.execute(stmt)
        try:
            stmt = proc.send(result.all() if result.returns_rows else ())
        except StopIteration as done:
            return cast(T, done.value)


class Store:
    """The Postgres side of the sync gate, and the blocking usage path past Redis that
    both gates use. Every method translates backend errors."""

    def __init__(self, engine: Engine, prefix: str) -> None:
        self.engine = engine
        #: The deployment's key prefix: the ledger rows it writes and reads are its own.
        self.prefix = prefix

    def _read(self, proc: Procedure[T]) -> T:
        with database_errors(), self.engine.connect() as conn:
            return run(conn, proc)

    def _write(self, proc: Procedure[T]) -> T:
        with database_errors(), self.engine.begin() as conn:
            return run(conn, proc)

    def recorded_shards(self, shards: int) -> int:
        """The shard count this deployment's data was written with (``shards`` is
        recorded if none is: the first process to ask records its own)."""
        return self._write(q.claim_shards(self.prefix, shards))

    def check_shards(self, shards: int) -> None:
        """Raise `ShardMismatch` unless ``shards`` is the deployment's recorded count."""
        recorded = self.recorded_shards(shards)
        if recorded != shards:
            raise ShardMismatch(
                f"QUOTA_SHARDS is {shards}, but deployment {self.prefix!r} runs with "
                f"{recorded} shards: set QUOTA_SHARDS={recorded}, or change the count with "
                "`quota shards change` (README: shards)"
            )

    def set_shards(self, shards: int) -> None:
        self._write(q.set_shards(self.prefix, shards))

    def load_budget(self, port: str) -> tuple[Budget, int]:
        return self._read(q.load_budget(port))

    def save_budget(
        self, port: str, changes: dict[str, Any], updated_by: str
    ) -> tuple[Budget, int]:
        return self._write(q.save_budget(port, changes, updated_by))

    def outage_policies(self) -> dict[str, OutagePolicy]:
        return self._read(q.outage_policies())

    def ports_with_budgets(self, *, enabled_only: bool = False) -> list[str]:
        return self._read(q.ports_with_budgets(enabled_only=enabled_only))

    def budget_history(self, port: str) -> list[BudgetChange]:
        return self._read(q.budget_history_of(port))

    def save_alert(self, alert: SoftCapAlert) -> None:
        self._write(q.save_alert(alert))

    def alerts(self, port: str) -> list[SoftCapAlert]:
        return self._read(q.alerts_of(port))

    def unreconciled(self, event_id: str) -> None:
        self._write(q.unreconciled(event_id))

    def usage_by_day(self, port: str, since: date) -> list[tuple[str, str, date, int]]:
        return self._read(q.usage_by_day(self.prefix, port, since))

    def breakdown(self, port: str, since: date) -> list[FeatureUsage]:
        return self._read(q.breakdown(self.prefix, port, since))

    def daily(self, port: str, start: date, end: date) -> list[DailyUsage]:
        return self._read(q.daily(self.prefix, port, start, end))

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
