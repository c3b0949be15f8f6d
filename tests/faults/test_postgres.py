"""Postgres faults against a cluster of the test's own: frozen (SIGSTOP of every
process: it accepts connections and never answers) and killed. No caller waits past
QUOTA_DATABASE_TIMEOUT; ports with a Redis copy decide as usual."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TypeVar, cast

import pytest
from sqlalchemy import Engine, text

from quota import DatabaseUnavailable, Gate, Settings
from quota.store import make_engine
from tests.gates import BlockingAsyncGate
from tests.servers import PostgresServer, RedisServer

T = TypeVar("T")


@pytest.fixture
def own_pg(postgres: PostgresServer) -> Iterator[Engine]:
    engine = make_engine(postgres.url())
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE budgets, budget_history, ledger, ledger_daily, ledger_direct"))
    yield engine
    postgres.thaw()
    engine.dispose()


@pytest.fixture(params=["sync", "async"])
def pgate(
    request: pytest.FixtureRequest,
    settings: Settings,
    server: RedisServer,
    postgres: PostgresServer,
) -> Iterator[Gate]:
    s = settings.model_copy(
        update={
            "redis_url": server.url,
            "redis_timeout": 0.5,
            "database_url": postgres.url(),
            "database_timeout": 1.0,
        }
    )
    if request.param == "sync":
        with Gate(s) as g:
            yield g
        return
    blocking = BlockingAsyncGate(s)  # AsyncGate: its budgets on the asyncio engine
    try:
        yield cast(Gate, blocking)
    finally:
        blocking.close()


def within(seconds: float, fn: Callable[[], T]) -> T:
    """``fn()``, which must return (or raise) within ``seconds``: a hang fails the test."""
    out: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still blocked after {seconds} s"
    if errors:
        raise errors[0]
    return out[0]


def test_a_frozen_postgres_blocks_no_caller(
    pgate: Gate, own_pg: Engine, postgres: PostgresServer, server: RedisServer
) -> None:
    pgate.set_budget(
        "cached", enabled=True, soft_cap_tokens=100, hard_cap_tokens=100, updated_by="u"
    )
    pgate.get_budget("cached")  # a pooled connection, which the freeze will strand
    postgres.freeze()
    # Redis has its copy: decided as usual, Postgres never asked.
    d = within(5, lambda: pgate.check("cached", 10))
    assert (d.ok, d.degraded, d.cap_tokens) == (True, False, 100)
    # No copy: the budget cannot be loaded, so the outage policy decides (closed).
    d = within(10, lambda: pgate.check("uncached", 10))
    assert (d.ok, d.reason, d.degraded) == (False, "unavailable", True)
    with pytest.raises(DatabaseUnavailable):
        within(10, lambda: pgate.get_budget("cached"))
    assert within(5, lambda: pgate.record(
        port_id="cached", feature="f", provider="x", model="m", input_tokens=5, output_tokens=0
    )).backend == "redis"  # fmt: skip
    server.kill()  # both down: the spool takes it
    result = within(10, lambda: pgate.record(
        port_id="cached", feature="f", provider="x", model="m", input_tokens=7, output_tokens=0,
        request_id="both-down",
    ))  # fmt: skip
    assert (result.stored, result.backend) == (True, "spool")
    postgres.thaw()
    # Postgres answers again: the next fallback write replays the spool.
    pgate.record(port_id="other", feature="f", provider="x", model="m", input_tokens=1,
                 output_tokens=0)  # fmt: skip
    deadline = 50
    while deadline and pgate._spooled:
        threading.Event().wait(0.1)
        deadline -= 1
    with own_pg.connect() as conn:
        rows = conn.execute(text("SELECT request_id, total_tokens FROM ledger ORDER BY 1")).all()
    assert [tuple(r) for r in rows] == [("both-down", 7), (None, 1)]


def test_a_killed_postgres_is_reconnected_when_it_returns(
    pgate: Gate, own_pg: Engine, postgres: PostgresServer
) -> None:
    pgate.set_budget("p", enabled=True, updated_by="u")
    postgres.kill()
    with pytest.raises(DatabaseUnavailable):
        within(10, lambda: pgate.get_budget("p"))
    assert within(10, lambda: pgate.check("new-port", 1)).reason == "unavailable"
    postgres.start()
    assert pgate.get_budget("p").enabled  # stale pooled connections are replaced
    assert pgate.check("new-port", 1).ok
