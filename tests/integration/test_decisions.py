"""check() against real Redis: every seed branch, and the Lua rules equal the Python model."""

from __future__ import annotations

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quota import Budget, Gate, InvalidInput
from quota.decisions import decide
from quota.scripts import library
from tests.conftest import watched


def spend(gate: Gate, port: str, tokens: int, feature: str = "chat") -> None:
    gate.record(
        port_id=port,
        feature=feature,
        provider="openai",
        model="gpt-4o",
        input_tokens=tokens,
        output_tokens=0,
    )


def test_disabled_budget_allows_and_still_reports_usage(gate: Gate) -> None:
    gate.set_budget("p", enabled=False, soft_cap_tokens=1, hard_cap_tokens=2, updated_by="u")
    spend(gate, "p", 50)
    d = gate.check("p", 10**6)
    assert (d.ok, d.reason, d.used_tokens, d.remaining, d.soft_cap) == (True, None, 50, None, False)


def test_hard_cap_exceeded(gate: Gate) -> None:
    gate.set_budget(
        "p", enabled=True, soft_cap_tokens=800, hard_cap_tokens=1000, period="day", updated_by="u"
    )
    spend(gate, "p", 1000)
    d = gate.check("p", 0)
    assert (d.ok, d.reason, d.used_tokens, d.cap_tokens) == (False, "hard-cap-exceeded", 1000, 1000)


def test_estimate_exceeds_cap(gate: Gate) -> None:
    gate.set_budget("p", enabled=True, soft_cap_tokens=800, hard_cap_tokens=1000, updated_by="u")
    spend(gate, "p", 900)
    d = gate.check("p", 101)
    assert (d.ok, d.reason, d.used_tokens, d.remaining) == (
        False,
        "estimated-exceeds-cap",
        900,
        100,
    )
    assert gate.check("p", 100).ok


def test_ok_reports_remaining_and_soft_flag(gate: Gate) -> None:
    gate.set_budget("p", enabled=True, soft_cap_tokens=800, hard_cap_tokens=1000, updated_by="u")
    spend(gate, "p", 800)
    d = gate.check("p", 10)
    assert (d.ok, d.remaining, d.soft_cap) == (True, 200, False)  # soft is "used > soft"
    spend(gate, "p", 1)
    assert gate.check("p", 10).soft_cap


def test_usage_counts_in_every_period_and_per_feature(gate: Gate) -> None:
    gate.set_budget("p", enabled=True, period="day", updated_by="u")
    spend(gate, "p", 30, "ocr")
    spend(gate, "p", 12, "chat")
    assert gate.current_period_tokens("p") == 42
    assert gate.current_period_tokens("p", feature="ocr") == 30
    assert gate.current_period_tokens("p", feature="none-yet") == 0
    # Switching the period takes effect at once: week and month were counted too.
    for period in ("week", "month"):
        gate.set_budget("p", period=period, updated_by="u")
        assert gate.current_period_tokens("p") == 42


def test_status_for_a_banner(gate: Gate) -> None:
    gate.set_budget(
        "p", enabled=True, soft_cap_tokens=10, hard_cap_tokens=20, period="week", updated_by="u"
    )
    assert gate.status("p").state == "ok"
    spend(gate, "p", 11)
    s = gate.status("p")
    assert (s.state, s.used_tokens, s.soft_cap_tokens, s.hard_cap_tokens) == ("soft", 11, 10, 20)
    assert s.period_start.weekday() == 0
    assert (s.resets_at - s.period_start).days == 7
    spend(gate, "p", 9)
    assert gate.status("p").state == "hard"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    enabled=st.booleans(),
    soft=st.integers(0, 2000),
    extra=st.integers(0, 2000),
    used=st.integers(0, 5000),
    estimate=st.integers(0, 5000),
)
def test_lua_decision_equals_the_python_rules(
    gate: Gate, enabled: bool, soft: int, extra: int, used: int, estimate: int
) -> None:
    port = f"h{soft}-{extra}-{used}-{estimate}-{int(enabled)}"
    budget = gate.set_budget(
        port, enabled=enabled, soft_cap_tokens=soft, hard_cap_tokens=soft + extra, updated_by="prop"
    )
    if used:
        spend(gate, port, used)
    d = gate.check(port, estimate)
    assert (d.ok, d.reason) == decide(budget, used, 0, estimate)
    assert d.used_tokens == used
    assert d.soft_cap == (budget.enabled and used > soft)
    r = gate.reserve(port, estimate, "f")
    assert (r.ok, r.reason) == decide(budget, used, 0, estimate)
    assert budget == Budget(enabled=enabled, soft_cap_tokens=soft, hard_cap_tokens=soft + extra)


def test_check_many_equals_check_for_every_port(gate: Gate, r: redis.Redis) -> None:
    requests = []
    for i in range(60):
        port = f"many-{i}"
        if i % 3:
            gate.set_budget(
                port, enabled=i % 2 == 0, soft_cap_tokens=50, hard_cap_tokens=100, updated_by="u"
            )  # others keep the default (disabled) budget
        if i % 4 == 0:
            spend(gate, port, i * 3)
        requests.append((port, (i * 7) % 130))
    watched(gate, r)  # the gate knows the epoch: losing the library alone is no data loss
    r.delete(gate.layout.for_port("many-1").budget)  # a cache miss inside the batch
    r.function_delete(library().name)  # and a server that lost the function library
    many = gate.check_many(requests)
    assert many == [gate.check(p, e) for p, e in requests]
    assert {d.reason for d in many} == {None, "hard-cap-exceeded", "estimated-exceeds-cap"}
    shards = {gate.layout.for_port(p).shard for p, _ in requests}
    assert len(shards) > 16  # the batch spans many shards, hence several primaries on a cluster
    assert gate.check_many([]) == []


def test_check_many_refuses_bad_input_before_any_call(gate: Gate) -> None:
    with pytest.raises(InvalidInput):
        gate.check_many([("ok", 1), ("bad port", 1)])
    with pytest.raises(InvalidInput):
        gate.check_many([("ok", -1)])


class _LooksLikeAPort:
    """Hashes and compares like a port id, but is no string."""

    def __init__(self, port: str) -> None:
        self.port = port

    def __hash__(self) -> int:
        return hash(self.port)

    def __eq__(self, other: object) -> bool:
        return other == self.port


def test_only_a_checked_string_skips_the_check(gate: Gate) -> None:
    # A port keyed once is not checked again (gate._port); something merely equal to it is.
    assert gate.check("seen", 1).ok
    with pytest.raises(InvalidInput, match="must be a string"):
        gate.check(_LooksLikeAPort("seen"), 1)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="must be a string"):
        gate.check_many([("seen", 1), (_LooksLikeAPort("seen"), 1)])  # type: ignore[list-item]
    assert [d.ok for d in gate.check_many([("seen", 1)])] == [True]
