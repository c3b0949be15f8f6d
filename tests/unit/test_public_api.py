from __future__ import annotations

import inspect

import pytest

import quota
from quota import Gate, Settings


def test_all_is_curated_and_importable() -> None:
    assert sorted(quota.__all__) == quota.__all__
    for name in quota.__all__:
        assert getattr(quota, name) is not None
    for pinned in ("Gate", "Budget", "Decision", "QuotaError"):
        assert pinned in quota.__all__


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
