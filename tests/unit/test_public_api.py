from __future__ import annotations

import inspect
import typing

import pytest

import quota
from quota import AsyncGate, Gate, Settings


def test_all_is_pinned_and_importable() -> None:
    assert quota.__all__ == [
        "AsyncGate",
        "AsyncReservation",
        "BackendError",
        "Budget",
        "BudgetChange",
        "BudgetExceeded",
        "DailyUsage",
        "DatabaseUnavailable",
        "Decision",
        "FeatureUsage",
        "Gate",
        "InvalidBudget",
        "InvalidInput",
        "QuotaError",
        "RateLimit",
        "RateState",
        "RedisUnavailable",
        "Reservation",
        "Settings",
        "SoftCapAlert",
        "Status",
        "UnknownReservation",
        "UsageEvent",
        "UsageResult",
        "WrongEventLoop",
        "period_end",
        "period_start",
    ]
    for name in quota.__all__:
        assert getattr(quota, name) is not None


def _public(cls: type) -> dict[str, inspect.Signature]:
    return {
        n: inspect.signature(f)
        for n, f in inspect.getmembers(cls, inspect.isfunction)
        if not n.startswith("_")
    }


def test_every_type_a_public_method_returns_is_exported() -> None:
    exported = {getattr(quota, n) for n in quota.__all__}
    for cls in (Gate, AsyncGate):
        hints = {n: typing.get_type_hints(getattr(cls, n)) for n in _public(cls)}
        for name, h in hints.items():
            ret = h.get("return")
            for t in (ret, *typing.get_args(ret)):
                if inspect.isclass(t) and t.__module__.startswith("quota"):
                    assert t in exported, f"{cls.__name__}.{name} returns {t.__name__}"


def test_async_gate_has_the_gates_methods_with_the_same_arguments() -> None:
    sync, aio = _public(Gate), _public(AsyncGate)
    renamed = {"close": "aclose"}
    for name, sig in sync.items():
        twin = renamed.get(name, name)
        assert twin in aio, f"AsyncGate lacks {twin}"
        assert list(aio[twin].parameters) == list(sig.parameters), name
        if name not in ("reservation", "from_settings"):
            assert inspect.iscoroutinefunction(getattr(AsyncGate, twin)), twin


def test_every_exception_has_the_one_root() -> None:
    errors = [
        getattr(quota, n)
        for n in quota.__all__
        if inspect.isclass(getattr(quota, n)) and issubclass(getattr(quota, n), Exception)
    ]
    assert len(errors) >= 7
    assert all(issubclass(e, quota.QuotaError) for e in errors)


def test_pinned_gate_signatures() -> None:
    params = {
        name: list(inspect.signature(getattr(Gate, name)).parameters)
        for name in (
            "check",
            "reserve",
            "commit",
            "release",
            "record",
            "set_budget",
            "current_period_tokens",
            "status",
            "get_budget",
        )
    }
    assert params["check"] == ["self", "port_id", "estimated_tokens"]
    assert params["reserve"] == ["self", "port_id", "estimated_tokens", "feature", "user_id"]
    assert params["commit"] == [
        "self",
        "reservation_id",
        "input_tokens",
        "output_tokens",
        "provider",
        "model",
        "request_id",
    ]
    assert set(params["record"]) == {
        "self",
        "port_id",
        "feature",
        "provider",
        "model",
        "input_tokens",
        "output_tokens",
        "user_id",
        "request_id",
    }
    assert set(params["set_budget"]) == {
        "self",
        "port_id",
        "enabled",
        "soft_cap_tokens",
        "hard_cap_tokens",
        "period",
        "outage_policy",
        "rate_limits",
        "feature_caps",
        "updated_by",
    }
    assert params["current_period_tokens"] == ["self", "port_id", "feature"]


def test_settings_come_from_quota_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUOTA_REDIS_URL", "redis://example:6380/2")
    monkeypatch.setenv("QUOTA_DATABASE_URL", "postgresql://u@db:5433/x")
    monkeypatch.setenv("QUOTA_SHARDS", "32")
    monkeypatch.setenv("QUOTA_LEASE_SECONDS", "30")
    s = Settings()
    assert (s.redis_url, s.shards, s.lease_seconds) == ("redis://example:6380/2", 32, 30)
    assert s.database_url == "postgresql+psycopg://u@db:5433/x"
    assert Settings(database_url="postgresql+psycopg://u@h/d").database_url == (
        "postgresql+psycopg://u@h/d"
    )


@pytest.mark.parametrize("prefix", ["", "has{brace}", "a:b", "x" * 33])
def test_key_prefix_cannot_break_the_key_grammar(prefix: str) -> None:
    with pytest.raises(ValueError, match="key_prefix"):
        Settings(key_prefix=prefix)


@pytest.mark.parametrize(
    ("result", "field"),
    [
        (quota.Decision(True, None, 0, 10, 10, False, 0, True, "day"), "ok"),
        (quota.UsageResult(True, False, "redis", 5), "stored"),
    ],
)
def test_gate_results_are_immutable(result: object, field: str) -> None:
    with pytest.raises(AttributeError):
        setattr(result, field, False)
