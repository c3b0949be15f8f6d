"""Rate limits and feature caps through both gates: what they admit, what they refuse
and why, the headers a decision carries, and how commits, releases, records and
lapsed leases move the buckets."""

from __future__ import annotations

import time
from typing import Any, cast

import pytest
import redis

import quota.core
from quota import Budget, Decision, Gate, InvalidBudget, RateLimit, Settings
from quota.reservations import new_hex_id
from tests.conftest import snapshot, watched
from tests.gates import BlockingAsyncGate

# 10,000 tokens (or 1,000 requests) a day drain one token per 8.64 s (86.4 s a request):
# within one test the figures are exact.
SLOW_TOKENS = RateLimit(tokens=10_000, per_seconds=86_400)
SLOW_REQUESTS = RateLimit(requests=1_000, per_seconds=86_400)


def _left(d: Decision, kind: str) -> int:
    (state,) = [s for s in d.rate if s.kind == kind]
    return state.remaining


def _budget(gate: Gate, port: str, **terms: Any) -> None:
    gate.set_budget(port, enabled=True, soft_cap_tokens=10**6, hard_cap_tokens=10**7,
                    updated_by="test", **terms)  # fmt: skip


def test_a_request_limit_refuses_with_an_honest_retry_after(gate: Gate) -> None:
    _budget(gate, "p", rate_limits=[RateLimit(requests=5, per_seconds=1)])
    seen = [gate.reserve("p", 10, "chat") for _ in range(5)]
    assert all(d.ok for d in seen)
    assert [_left(d, "requests") for d in seen] == [4, 3, 2, 1, 0]
    refused = gate.reserve("p", 10, "chat")
    assert (refused.ok, refused.reason, refused.reservation_id) == (False, "rate-limited", None)
    assert refused.retry_after_ms is not None
    assert 0 < refused.retry_after_ms <= 1000
    h = refused.headers()
    assert h["x-ratelimit-limit-requests"] == "5"
    assert h["x-ratelimit-remaining-requests"] == "0"
    assert h["retry-after"] == "1"
    assert h["retry-after-ms"] == str(refused.retry_after_ms)
    time.sleep(refused.retry_after_ms / 1000 + 0.002)  # the server's clock is this one's
    again = gate.reserve("p", 10, "chat")
    assert (again.ok, again.reason, again.retry_after_ms) == (True, None, None)


def test_a_check_consumes_nothing_and_a_disabled_budget_still_has_its_limits(
    gate: Gate,
) -> None:
    gate.set_budget("p", enabled=False, updated_by="test",
                    rate_limits=[RateLimit(requests=2, per_seconds=3600)])  # fmt: skip
    for _ in range(5):
        assert gate.check("p", 10).ok
    assert gate.reserve("p", 10, "a").ok
    assert gate.reserve("p", 10, "a").ok
    d = gate.check("p", 10)
    assert (d.ok, d.reason, d.enabled) == (False, "rate-limited", False)
    assert gate.reserve("p", 10, "a").reason == "rate-limited"


def test_commits_releases_and_records_move_the_token_bucket_exactly(gate: Gate) -> None:
    _budget(gate, "p", rate_limits=[SLOW_TOKENS, SLOW_REQUESTS])
    d = gate.reserve("p", 100, "chat")
    assert (_left(d, "tokens"), _left(d, "requests")) == (9_900, 999)
    gate.commit(d.reservation_id or "", input_tokens=100, output_tokens=50, provider="x",
                model="m")  # fmt: skip
    assert _left(gate.check("p", 0), "tokens") == 9_850  # 50 above the estimate: debt
    d = gate.reserve("p", 200, "chat")
    assert _left(d, "tokens") == 9_650
    assert gate.release(d.reservation_id or "")
    assert _left(gate.check("p", 0), "tokens") == 9_850  # the estimate back
    d = gate.reserve("p", 100, "chat")
    gate.commit(d.reservation_id or "", input_tokens=60, output_tokens=0, provider="x",
                model="m")  # fmt: skip
    assert _left(gate.check("p", 0), "tokens") == 9_790  # 40 below: given back
    gate.record(port_id="p", feature="chat", provider="x", model="m", input_tokens=70,
                output_tokens=0)  # fmt: skip
    after = gate.check("p", 0)
    # Three reserves and a record took a request each; a release returns none.
    assert (_left(after, "tokens"), _left(after, "requests")) == (9_720, 996)
    h = after.headers()
    assert h["x-ratelimit-remaining-tokens"] == "9720"
    assert h["x-ratelimit-limit-tokens"] == "10000"
    assert "retry-after" not in h


def test_a_lapsed_lease_returns_its_estimate_and_a_late_commit_counts_in_full(
    gate: Gate, settings: Settings
) -> None:
    short = settings.model_copy(update={"lease_seconds": 0.3})
    made = Gate(short) if isinstance(gate, Gate) else cast(Gate, BlockingAsyncGate(short))
    with made as quick:
        _budget(quick, "p", rate_limits=[SLOW_TOKENS])
        d = quick.reserve("p", 300, "chat")
        assert _left(d, "tokens") == 9_700
        time.sleep(0.4)
        other = quick.reserve("p", 1, "chat")  # purges the lapsed hold: 300 back
        assert _left(other, "tokens") == 9_999
        late = quick.commit(d.reservation_id or "", input_tokens=250, output_tokens=0,
                            provider="x", model="m")  # fmt: skip
        assert late.lease_expired
        assert _left(quick.check("p", 0), "tokens") == 9_749  # 250 counted in full


def test_an_estimate_larger_than_the_bucket_is_never_admitted(gate: Gate) -> None:
    _budget(gate, "p", rate_limits=[RateLimit(tokens=1_000, per_seconds=60, burst=500)])
    d = gate.reserve("p", 501, "chat")
    assert (d.ok, d.reason, d.retry_after_ms) == (False, "estimate-exceeds-rate-limit", None)
    assert gate.reserve("p", 500, "chat").ok


def test_a_feature_cap_refuses_its_feature_and_not_the_others(gate: Gate) -> None:
    _budget(gate, "p", feature_caps={"ocr": 100})
    a = gate.reserve("p", 60, "ocr")
    assert a.ok
    b = gate.reserve("p", 60, "ocr")  # 60 held + 60 > 100
    assert (b.ok, b.reason) == (False, "feature-cap-exceeded")
    assert gate.reserve("p", 500, "chat").ok
    gate.commit(a.reservation_id or "", input_tokens=30, output_tokens=0, provider="x",
                model="m")  # fmt: skip
    assert gate.reserve("p", 70, "ocr").ok  # 30 used + 70 = the cap
    c = gate.reserve("p", 1, "ocr")
    assert c.reason == "feature-cap-exceeded"
    assert gate.current_period_tokens("p", "ocr") == 30


def test_a_released_feature_hold_frees_the_feature(gate: Gate) -> None:
    _budget(gate, "p", feature_caps={"ocr": 100})
    a = gate.reserve("p", 100, "ocr")
    assert gate.reserve("p", 1, "ocr").reason == "feature-cap-exceeded"
    assert gate.release(a.reservation_id or "")
    assert not gate.release(a.reservation_id or "")  # settled: a no-op
    assert gate.reserve("p", 100, "ocr").ok


def test_limits_and_caps_are_stored_with_the_budget_and_its_history(gate: Gate) -> None:
    limits = [RateLimit(requests=600, per_seconds=60), RateLimit(tokens=90_000, per_seconds=60)]
    _budget(gate, "p", rate_limits=limits, feature_caps={"ocr": 50_000})
    b = gate.get_budget("p")
    assert b.rate_limits == tuple(limits)
    assert b.feature_caps == {"ocr": 50_000}
    gate.set_budget("p", hard_cap_tokens=2 * 10**7, updated_by="test")  # partial: kept
    assert gate.get_budget("p").rate_limits == tuple(limits)
    gate.set_budget("p", rate_limits=[], feature_caps={}, updated_by="test")  # removed
    assert gate.get_budget("p") == Budget(enabled=True, soft_cap_tokens=10**6,
                                          hard_cap_tokens=2 * 10**7)  # fmt: skip
    d = gate.reserve("p", 10, "ocr")
    assert (d.ok, d.rate, d.headers()) == (True, (), {})
    history = gate.budget_history("p")
    assert history[0].after.rate_limits == tuple(limits)
    assert history[-1].before is not None
    assert history[-1].before.feature_caps == {"ocr": 50_000}


@pytest.mark.parametrize(
    ("terms", "problems"),
    [
        ({"rate_limits": [{"requests": 0, "per_seconds": 0}]},
         ["greater than or equal to 1"]),
        ({"rate_limits": [{"requests": 5, "tokens": 5, "per_seconds": 60}]},
         ["exactly one of requests and tokens"]),
        ({"rate_limits": [{"requests": 5, "per_seconds": 90_000}]},
         ["less than or equal to 86400"]),
        ({"rate_limits": [{"requests": 5, "per_seconds": 60, "window": 3}]},
         ["Extra inputs are not permitted"]),
        ({"rate_limits": [{"requests": 5, "per_seconds": 60}] * 2},
         ["share a window"]),
        ({"rate_limits": [{"requests": i + 1, "per_seconds": i + 1} for i in range(5)]},
         ["at most 4"]),
        ({"rate_limits": [{"tokens": 999_999_937, "per_seconds": 86_399}]},
         ["too fine-grained"]),
        ({"feature_caps": {"bad|name": 5, "ocr": -1}}, ["bad|name", "greater than or equal to 0"]),
    ],
)  # fmt: skip
def test_bad_limits_name_every_problem_and_write_nothing(
    gate: Gate, r: redis.Redis, terms: dict[str, object], problems: list[str]
) -> None:
    _budget(gate, "p")
    watched(gate, r)
    before = snapshot(r, gate.settings.key_prefix)
    history = gate.budget_history("p")
    with pytest.raises(InvalidBudget) as caught:
        gate.set_budget("p", updated_by="test", **terms)  # type: ignore[arg-type]
    for problem in problems:
        assert problem in str(caught.value)
    assert gate.budget_history("p") == history
    assert snapshot(r, gate.settings.key_prefix) == before


def test_a_rate_limit_built_wrong_is_refused_with_every_problem_named() -> None:
    with pytest.raises(InvalidBudget) as caught:
        RateLimit(requests=0, per_seconds=100_000, burst=-1)
    text = str(caught.value)
    assert text.startswith("invalid rate limit:")
    for field in ("requests", "per_seconds", "burst"):
        assert field in text


def test_check_many_reports_each_ports_buckets(gate: Gate) -> None:
    _budget(gate, "limited", rate_limits=[RateLimit(requests=1, per_seconds=3600)])
    _budget(gate, "plain")
    assert gate.reserve("limited", 1, "chat").ok  # its one request this hour
    limited, plain, unknown = gate.check_many([("limited", 1), ("plain", 1), ("nobody", 1)])
    assert (limited.ok, limited.reason) == (False, "rate-limited")
    assert limited.retry_after_ms is not None
    assert limited.retry_after_ms > 3_500_000
    assert [s.remaining for s in limited.rate] == [0]
    assert (plain.ok, plain.rate, unknown.ok, unknown.rate) == (True, (), True, ())


def test_a_lapsed_feature_hold_comes_back_once(gate: Gate, settings: Settings) -> None:
    short = settings.model_copy(update={"lease_seconds": 0.3})
    made = Gate(short) if isinstance(gate, Gate) else cast(Gate, BlockingAsyncGate(short))
    with made as quick:
        _budget(quick, "p", feature_caps={"ocr": 100}, rate_limits=[SLOW_TOKENS])
        a = quick.reserve("p", 100, "ocr")
        assert quick.reserve("p", 1, "ocr").reason == "feature-cap-exceeded"
        time.sleep(0.4)
        assert quick.reserve("p", 50, "ocr").ok  # purges a's lapsed hold: 100 back
        late = quick.commit(a.reservation_id or "", input_tokens=40, output_tokens=0,
                            provider="x", model="m")  # fmt: skip
        assert late.lease_expired
        # 40 used and 50 held: the late commit took no hold off a second time.
        assert quick.reserve("p", 10, "ocr").ok
        assert quick.reserve("p", 1, "ocr").reason == "feature-cap-exceeded"


def test_a_new_budget_copy_keeps_the_holds_and_the_buckets_it_can(gate: Gate) -> None:
    _budget(gate, "p", feature_caps={"ocr": 100}, rate_limits=[SLOW_TOKENS])
    a = gate.reserve("p", 60, "ocr")
    assert _left(a, "tokens") == 9_940
    # Another capped feature ahead of ocr in the state, and a request limit as well:
    # ocr's hold moves with its feature, the token bucket starts again under new limits.
    _budget(gate, "p", feature_caps={"asr": 5, "ocr": 100}, rate_limits=[SLOW_TOKENS])
    assert _left(gate.check("p", 0), "tokens") == 9_940  # the same limits: kept
    assert gate.reserve("p", 50, "ocr").reason == "feature-cap-exceeded"  # 60 still held
    assert gate.reserve("p", 5, "asr").ok
    _budget(gate, "p", feature_caps={"asr": 5, "ocr": 100},
            rate_limits=[SLOW_TOKENS, SLOW_REQUESTS])  # fmt: skip
    fresh = gate.check("p", 0)
    assert (_left(fresh, "tokens"), _left(fresh, "requests")) == (10_000, 1_000)
    assert gate.reserve("p", 1, "asr").reason == "feature-cap-exceeded"
    assert gate.release(a.reservation_id or "")
    assert gate.reserve("p", 100, "ocr").ok  # ocr's hold came back with the release


def test_a_port_whose_limits_came_or_went_is_decided_by_its_copy(gate: Gate) -> None:
    # The gate learns from a port's replies whether it has limits (its next reserve
    # then reads their state with the budget copy); a budget changed since must still
    # be decided by what the copy says, both ways.
    _budget(gate, "p", rate_limits=[RateLimit(requests=2, per_seconds=3600)])
    assert gate.reserve("p", 1, "chat").ok  # learnt: limited
    _budget(gate, "p", rate_limits=[])
    for _ in range(3):
        d = gate.reserve("p", 1, "chat")
        assert (d.ok, d.rate) == (True, ())
    _budget(gate, "p", rate_limits=[RateLimit(requests=2, per_seconds=3600)])
    assert [gate.reserve("p", 1, "chat").ok for _ in range(3)] == [True, True, False]


def test_a_resent_reserve_takes_one_request_and_one_hold(
    gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reserve whose reply was lost goes again with the same id: its request, its
    tokens and its feature's hold are counted once."""
    # (A resend is decided as a new call, then finds its hold: the cap fits two.)
    _budget(gate, "p", feature_caps={"ocr": 250}, rate_limits=[SLOW_TOKENS, SLOW_REQUESTS])
    fixed = new_hex_id(100, "ocr", None, "p")
    monkeypatch.setattr(quota.core, "new_hex_id", lambda *args, **kwargs: fixed)
    first = gate.reserve("p", 100, "ocr")
    again = gate.reserve("p", 100, "ocr")
    assert (first.ok, again.ok, first.reservation_id) == (True, True, again.reservation_id)
    for d in (first, again, gate.check("p", 0)):
        assert (_left(d, "tokens"), _left(d, "requests")) == (9_900, 999)
    monkeypatch.undo()
    assert gate.reserve("p", 150, "ocr").ok  # 100 held once: 150 more fit the cap
    assert gate.reserve("p", 1, "ocr").reason == "feature-cap-exceeded"
