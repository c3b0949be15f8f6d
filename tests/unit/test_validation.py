from __future__ import annotations

import math

import pytest

from quota import InvalidBudget, InvalidInput
from quota import validation as v
from quota.decisions import decide, state_of
from quota.models import Budget


@pytest.mark.parametrize("port", ["port-1", "a", "A.b_c:d@e/f-9", "x" * 128])
def test_valid_port_ids(port: str) -> None:
    assert v.port_id(port) == port


@pytest.mark.parametrize(
    "port",
    [
        "",
        "x" * 129,
        "has space",
        "tab\t",
        "new\nline",
        "brace{q1}",
        "star*",
        "ü",
        "a,b",
        7,
        None,
        b"bytes",
    ],
)
def test_invalid_port_ids(port: object) -> None:
    with pytest.raises(InvalidInput, match="port id"):
        v.port_id(port)


def test_feature_is_limited_to_64_chars() -> None:
    assert v.feature("f" * 64)
    with pytest.raises(InvalidInput):
        v.feature("f" * 65)


def test_a_seen_identifier_is_still_held_to_each_kinds_length() -> None:
    name = "m" * 100
    assert v.label("model", name) == name  # seen: up to 128 characters is a label
    assert v.label("model", name) == name  # from the seen set
    with pytest.raises(InvalidInput, match="feature"):
        v.feature(name)  # a feature is at most 64


class _Str(str):
    """A str subclass: its == and hash could say anything, so it is never taken as seen."""


def test_only_plain_strings_are_remembered() -> None:
    v.port_id("plain-port")
    odd = _Str("odd-port")
    assert v.port_id(odd) is odd
    assert "odd-port" not in v._SEEN
    assert "plain-port" in v._SEEN


def test_past_the_bound_identifiers_are_checked_every_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(v, "_SEEN", set())
    monkeypatch.setattr(v, "_SEEN_LIMIT", 2)
    for port in ("p1", "p2", "p3"):
        assert v.port_id(port) == port
    assert sorted(v._SEEN) == ["p1", "p2"]
    with pytest.raises(InvalidInput):
        v.port_id("p 4")
    assert v.port_id("p3") == "p3"


@pytest.mark.parametrize("count", [0, 1, 10**12])
def test_valid_token_counts(count: int) -> None:
    assert v.tokens("n", count) == count


@pytest.mark.parametrize(
    "count",
    [-1, True, False, 1.0, math.nan, math.inf, "5", None, 10**12 + 1, 2**64],
)
def test_invalid_token_counts(count: object) -> None:
    with pytest.raises(InvalidInput):
        v.tokens("n", count)


# --- budget validation (seed parity: setAiBudget's rules, plus types and enum) ---


def test_defaults_match_the_seed() -> None:
    assert Budget() == Budget(
        enabled=False, soft_cap_tokens=100_000, hard_cap_tokens=500_000, period="month"
    )


def test_merge_keeps_unspecified_fields() -> None:
    b = Budget(enabled=True, soft_cap_tokens=10, hard_cap_tokens=20, period="day")
    assert b.merged(hard_cap_tokens=30) == b.model_copy(update={"hard_cap_tokens": 30})
    assert b.merged() == b


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"soft_cap_tokens": -1}, "soft_cap_tokens"),
        ({"hard_cap_tokens": -5}, "hard_cap_tokens"),
        ({"soft_cap_tokens": 600_000}, "cannot exceed"),
        ({"hard_cap_tokens": 99_999}, "cannot exceed"),
        ({"period": "year"}, "period"),
        ({"enabled": "yes"}, "enabled"),
        ({"soft_cap_tokens": 1.5}, "soft_cap_tokens"),
        ({"hard_cap_tokens": True}, "hard_cap_tokens"),
        ({"hard_cap_tokens": 10**16}, "hard_cap_tokens"),
        ({"colour": "red"}, "unknown"),
    ],
)
def test_invalid_budgets(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidBudget, match=message):
        Budget().merged(**changes)


def test_check_fields_catches_types_without_the_stored_budget() -> None:
    Budget.check_fields({"soft_cap_tokens": 10**9, "hard_cap_tokens": 1, "period": None})
    with pytest.raises(InvalidBudget, match="period"):
        Budget.check_fields({"period": "fortnight"})


# --- decision rules (seed parity) ---

ON = Budget(enabled=True, soft_cap_tokens=800, hard_cap_tokens=1000, period="day")


@pytest.mark.parametrize(
    ("budget", "used", "reserved", "estimate", "expected"),
    [
        (Budget(hard_cap_tokens=10, soft_cap_tokens=5), 10**6, 0, 10**6, (True, None)),
        (ON, 1000, 0, 0, (False, "hard-cap-exceeded")),
        (ON, 1500, 0, 1, (False, "hard-cap-exceeded")),
        (ON, 900, 0, 101, (False, "estimated-exceeds-cap")),
        (ON, 900, 0, 100, (True, None)),
        (ON, 0, 0, 1000, (True, None)),
        (ON, 0, 0, 1001, (False, "estimated-exceeds-cap")),
        (ON, 500, 400, 101, (False, "estimated-exceeds-cap")),
        (ON, 500, 400, 100, (True, None)),
        (ON, 500, 500, 0, (True, None)),
    ],
)
def test_decide(
    budget: Budget, used: int, reserved: int, estimate: int, expected: tuple[bool, str | None]
) -> None:
    assert decide(budget, used, reserved, estimate) == expected


@pytest.mark.parametrize(
    ("used", "state"), [(0, "ok"), (800, "ok"), (801, "soft"), (999, "soft"), (1000, "hard")]
)
def test_state(used: int, state: str) -> None:
    assert state_of(ON, used) == state
    assert state_of(Budget(), 10**9) == "ok"
