"""Postgres for `AsyncGate`: quota/queries.py's procedures on an asyncio engine
(SQLAlchemy over psycopg's AsyncConnection), so that budgets and reports never take a
thread. The usage path past Redis stays `Store`'s, on a thread (it runs only while
Redis fails, and shares its COPY with the drain)."""

from __future__ import annotations

import math
import os
import weakref
from datetime import date
from typing import Any, TypeVar, cast

import psycopg
from psycopg.abc import PQGen
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from quota import queries as q
from quota._backend import database_errors
from quota.models import (
    Budget,
    BudgetChange,
    DailyUsage,
    FeatureUsage,
    ModelUsage,
    SoftCapAlert,
)
from quota.queries import Procedure
from quota.settings import sqlalchemy_url
from quota.store import unanswered

T = TypeVar("T")


class _BoundedAsyncConnection(psycopg.AsyncConnection[Any]):
    """`quota.store`'s bounded connection for asyncio: every wait on the server ends
    after ``wait_seconds``, and the connection is closed then, so that SQLAlchemy's
    rollback afterwards fails at once instead of waiting on a hung server."""

    wait_seconds: float = 5.0

    async def wait(
        self, gen: PQGen[Any], interval: float = 0.1, timeout: float | None = None
    ) -> Any:
        try:
            return await super().wait(
                gen, interval, timeout if timeout is not None else self.wait_seconds
            )
        except psycopg.errors._WaitTimeout:
            raise unanswered(self.pgconn, self.wait_seconds) from None


def make_async_engine(url: str, timeout: float) -> AsyncEngine:
    """An asyncio engine for ``url`` whose every wait is bounded by ``timeout``, as
    `quota.store.make_engine`'s; a forked child drops its parent's connections."""
    ms = int(timeout * 1000)
    engine = create_async_engine(
        sqlalchemy_url(url),
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        pool_timeout=timeout,
        connect_args={
            "connect_timeout": max(1, math.ceil(timeout)),  # libpq takes whole seconds
            "options": f"-c statement_timeout={ms} -c lock_timeout={ms}",
        },
    )
    bounded = cast(
        type[_BoundedAsyncConnection],
        type("BoundedAsyncConnection", (_BoundedAsyncConnection,), {"wait_seconds": timeout}),
    )

    @event.listens_for(engine.sync_engine, "do_connect")
    def _connect(dialect: Any, rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        cparams["async_creator_fn"] = bounded.connect  # the dialect's hook for its connect

    ref = weakref.ref(engine.sync_engine)

    def after_fork() -> None:
        eng = ref()
        if eng is not None:
            eng.dispose(close=False)

    os.register_at_fork(after_in_child=after_fork)
    return engine


async def run(conn: AsyncConnection, proc: Procedure[T]) -> T:
    """Drive a procedure of quota/queries.py on ``conn``."""
    stmt = next(proc)  # every procedure runs at least one statement
    while True:
        result = await conn.execute(stmt)
        try:
            stmt = proc.send(result.all() if result.returns_rows else ())
        except StopIteration as done:
            return cast(T, done.value)


class AsyncStore:
    """`Store`'s budget and report methods, awaited. Every method translates errors."""

    def __init__(self, engine: AsyncEngine, prefix: str) -> None:
        self.engine = engine
        self.prefix = prefix

    async def _read(self, proc: Procedure[T]) -> T:
        with database_errors():
            async with self.engine.connect() as conn:
                return await run(conn, proc)

    async def _write(self, proc: Procedure[T]) -> T:
        with database_errors():
            async with self.engine.begin() as conn:
                return await run(conn, proc)

    async def load_budget(self, port: str) -> tuple[Budget, int]:
        return await self._read(q.load_budget(port))

    async def save_budget(
        self, port: str, changes: dict[str, Any], updated_by: str
    ) -> tuple[Budget, int]:
        return await self._write(q.save_budget(port, changes, updated_by))

    async def budget_history(self, port: str) -> list[BudgetChange]:
        return await self._read(q.budget_history_of(port))

    async def save_alert(self, alert: SoftCapAlert) -> None:
        await self._write(q.save_alert(alert))

    async def alerts(self, port: str) -> list[SoftCapAlert]:
        return await self._read(q.alerts_of(port))

    async def unreconciled(self, event_id: str) -> None:
        await self._write(q.unreconciled(event_id))

    async def usage_by_day(self, port: str, since: date) -> list[tuple[str, str, date, int]]:
        return await self._read(q.usage_by_day(self.prefix, port, since))

    async def breakdown(self, port: str, since: date) -> list[FeatureUsage]:
        return await self._read(q.breakdown(self.prefix, port, since))

    async def by_model(self, port: str, since: date) -> list[ModelUsage]:
        return await self._read(q.by_model(self.prefix, port, since))

    async def enabled_caps(self) -> dict[str, tuple[int, int]]:
        return await self._read(q.enabled_caps())

    async def daily(self, port: str, start: date, end: date) -> list[DailyUsage]:
        return await self._read(q.daily(self.prefix, port, start, end))
