"""set_budget / get_budget against real Postgres and Redis (seed parity and beyond)."""

from __future__ import annotations

import threading

import pytest
import redis
from sqlalchemy import Engine, text

from quota import Budget, Gate, InvalidBudget, InvalidInput, Settings
from quota.canned import CannedTransport
from quota.housekeeping import forget_prefix
from tests.conftest import pg_counts, snapshot, watched


def test_unknown_port_has_the_default_disabled_budget(gate: Gate) -> None:
    assert gate.get_budget("nobody") == Budget()
    d = gate.check("nobody", estimated_tokens=10**9)
    assert d.ok
    assert not d.enabled
    assert d.remaining is None


def test_set_budget_merges_partial_updates_and_logs_history(gate: Gate) -> None:
    gate.set_budget(
        "p",
        enabled=True,
        soft_cap_tokens=800,
        hard_cap_tokens=1000,
        period="day",
        updated_by="alice",
    )
    b = gate.set_budget("p", hard_cap_tokens=2000, updated_by="bob")
    assert b == Budget(enabled=True, soft_cap_tokens=800, hard_cap_tokens=2000, period="day")
    assert gate.get_budget("p") == b
    history = gate.budget_history("p")
    assert [h.changed_by for h in history] == ["alice", "bob"]
    assert history[0].before is None
    assert history[1].before == Budget(
        enabled=True, soft_cap_tokens=800, hard_cap_tokens=1000, period="day"
    )
    assert history[1].after == b


def test_set_budget_refreshes_the_redis_copy_at_once(gate: Gate) -> None:
    gate.set_budget("p", enabled=True, soft_cap_tokens=10, hard_cap_tokens=100, updated_by="u")
    assert gate.check("p", 100).ok
    gate.set_budget("p", hard_cap_tokens=50, soft_cap_tokens=10, updated_by="u")
    d = gate.check("p", 100)
    assert not d.ok
    assert d.reason == "estimated-exceeds-cap"
    assert d.cap_tokens == 50


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"soft_cap_tokens": -1}, "soft_cap_tokens"),
        ({"hard_cap_tokens": 10}, "cannot exceed"),  # stored soft cap is 800
        ({"soft_cap_tokens": 5000}, "cannot exceed"),
        ({"period": "year"}, "period"),
        ({"hard_cap_tokens": 1.5}, "hard_cap_tokens"),
        ({"enabled": 1}, "enabled"),
    ],
)
def test_invalid_updates_write_nothing(
    gate: Gate, pg: Engine, r: redis.Redis, changes: dict[str, object], message: str
) -> None:
    watched(gate, r)
    gate.set_budget("p", enabled=True, soft_cap_tokens=800, hard_cap_tokens=1000, updated_by="u")
    before_pg, before_redis = pg_counts(pg), snapshot(r, gate.settings.key_prefix)
    with pytest.raises(InvalidBudget, match=message):
        gate.set_budget("p", updated_by="u", **changes)  # type: ignore[arg-type]
    assert pg_counts(pg) == before_pg
    assert snapshot(r, gate.settings.key_prefix) == before_redis
    assert gate.get_budget("p").hard_cap_tokens == 1000


def test_bad_port_or_author_is_refused(gate: Gate, pg: Engine) -> None:
    with pytest.raises(InvalidInput, match="port id"):
        gate.set_budget("bad port", enabled=True, updated_by="u")
    with pytest.raises(InvalidInput, match="updated_by"):
        gate.set_budget("p", enabled=True, updated_by="")
    assert pg_counts(pg)["budgets"] == 0


def test_concurrent_partial_updates_all_land(gate: Gate, pg: Engine) -> None:
    """Each writer changes a different field; none is lost to a stale merge."""
    gate.set_budget("p", soft_cap_tokens=0, hard_cap_tokens=10**6, updated_by="setup")
    barrier = threading.Barrier(3)

    def write(**change: object) -> None:
        barrier.wait()
        gate.set_budget("p", updated_by="racer", **change)  # type: ignore[arg-type]

    threads = [
        threading.Thread(target=write, kwargs={"enabled": True}),
        threading.Thread(target=write, kwargs={"period": "week"}),
        threading.Thread(target=write, kwargs={"soft_cap_tokens": 77}),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert gate.get_budget("p") == Budget(
        enabled=True, soft_cap_tokens=77, hard_cap_tokens=10**6, period="week"
    )
    with pg.connect() as conn:
        versions = conn.execute(text("SELECT version FROM budgets")).scalars().all()
    assert versions == [4]
    assert len(gate.budget_history("p")) == 4


def test_cache_miss_loads_from_postgres(gate: Gate, r: redis.Redis) -> None:
    gate.set_budget("p", enabled=True, soft_cap_tokens=1, hard_cap_tokens=5, updated_by="u")
    r.delete(gate.layout.for_port("p").budget)  # as after a restart or eviction
    d = gate.check("p", 6)
    assert d.reason == "estimated-exceeds-cap"
    assert r.hget(gate.layout.for_port("p").budget, "cfg") == "1|1|5|month"


def test_a_slow_cache_fill_cannot_overwrite_a_newer_budget(gate: Gate, r: redis.Redis) -> None:
    gate.set_budget("p", enabled=True, soft_cap_tokens=1, hard_cap_tokens=5, updated_by="u")
    stale = Budget(enabled=False)
    pk = gate.layout.for_port("p")
    gate._cache_budget(pk, stale, version=0)  # a loader that read Postgres before the update
    assert r.hget(pk.budget, "cfg") == "1|1|5|month"


def test_a_budget_miss_loads_the_copy_from_postgres_and_asks_again(
    settings: Settings, pg: Engine, r: redis.Redis
) -> None:
    """Driven by a canned transport: the first check finds no budget copy, the gate
    loads the budget from Postgres, writes the copy and sends the check again."""
    with Gate(settings) as admin:
        admin.set_budget("p", enabled=True, soft_cap_tokens=70, hard_cap_tokens=90, updated_by="u")
    forget_prefix(r, settings.key_prefix)  # Redis forgot the port; Postgres did not
    canned = CannedTransport(
        {"check": ["-1", "1||10|0|||1|70|90|month"], "budget_put": ["1"], "rebuild": [0]}
    )
    with Gate(settings, transport=canned) as gate:
        d = gate.check("p", 5)
    assert (d.ok, d.used_tokens, d.cap_tokens) == (True, 10, 90)
    ops = [op for op, _, _ in canned.calls]
    assert ops[0] == "check"
    assert ops[-2:] == ["budget_put", "check"]
    _, keys, args = canned.calls[-2]
    assert keys == (gate.layout.for_port("p").budget,)
    assert args[1:] == (1, 70, 90, "month", "", "")  # the stored budget after its version
