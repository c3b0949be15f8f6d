"""Replies as the Lua functions write them (lib.lua's decision and usage_reply), parsed.
The integration tests run the same parsing against real Redis; these pin each field."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from quota import RateLimit, RateState
from quota.models import Decision, UsageResult
from quota.ratelimits import pack_state, spec
from quota.replies import Replies, Terms

counts = st.integers(min_value=0, max_value=10**12)
periods = st.sampled_from(["day", "week", "month"])


def budget(on: bool, soft: int, hard: int, period: str) -> str:
    return f"{'1' if on else '0'}|{soft}|{hard}|{period}"


@given(st.booleans(), counts, counts, periods, counts, st.integers(-(10**6), 10**12), counts)
def test_a_decision_reads_back_every_field(
    on: bool, soft: int, hard: int, period: str, used: int, reserved: int, holding: int
) -> None:
    refused = used >= hard
    reply = "|".join(
        [
            "0" if refused else "1",
            "hard-cap-exceeded" if refused else "",
            str(used),
            str(reserved),
            "",
            "",
            budget(on, soft, hard, period),
        ]
    )
    assert Replies().decision(reply, holding, "rid") == Decision(
        ok=not refused,
        reason="hard-cap-exceeded" if refused else None,
        used_tokens=used,
        remaining=hard - used if on else None,
        cap_tokens=hard,
        soft_cap=on and used > soft,
        reserved_tokens=max(reserved + holding, 0),
        enabled=on,
        period=period,  # type: ignore[arg-type]
        reservation_id="rid",
    )


def test_a_disabled_budget_has_no_remaining_and_no_soft_cap() -> None:
    d = Replies().decision("1||900|0|||0|100|1000|day")
    assert (d.ok, d.reason, d.remaining, d.soft_cap, d.enabled) == (True, None, None, False, False)


def test_standing_gives_the_features_usage_only_when_asked() -> None:
    replies = Replies()
    assert replies.standing("1||700|-5|||1|500|1000|week") == (
        700,
        0,  # never reported below zero
        None,
        Terms(True, 500, 1000, "week"),
    )
    assert replies.standing("1||700|40|30||1|500|1000|week").feature_used == 30


def test_a_counted_usage_reply() -> None:
    result, alert = Replies().usage("1|1200|0|0", 1200, "ev")
    assert result == UsageResult(True, False, "redis", 1200, 1200, False, False, "ev")
    assert alert is None


def test_a_no_op_reply_is_a_duplicate_without_an_event() -> None:
    result, _ = Replies().usage("2|-1|0|0", 50, "ev")
    assert (result.duplicate, result.used_tokens, result.event_id) == (True, None, None)


def test_a_lapsed_commit_and_an_alert_carry_the_budget_terms() -> None:
    result, alert = Replies().usage("1|600|1|1|1|500|1000|month", 100, "ev")
    assert (result.soft_cap_alert, result.lease_expired, result.used_tokens) == (True, True, 600)
    assert alert == Terms(True, 500, 1000, "month")


def test_the_memo_of_budget_terms_is_bounded() -> None:
    replies = Replies()
    for n in range(Replies.BOUND + 5):
        assert replies.terms(budget(True, n, n + 1, "day")).soft_cap == n
    assert len(replies._terms) <= Replies.BOUND
    # A budget seen before the memo started again is parsed again, the same.
    assert replies.terms(budget(True, 0, 1, "day")) == Terms(True, 0, 1, "day")


def test_a_decision_with_rate_limits_carries_each_bucket_and_the_wait() -> None:
    limits = [RateLimit(requests=600, per_seconds=60), RateLimit(tokens=90_000, per_seconds=60)]
    copy = f"1|500|1000|day|{spec(limits)}|ocr=50"
    # 600 requests a minute: a request costs 100 and 1 drains a ms, the bucket holds
    # 60,000; 90,000 tokens: 2 and 3, 180,000. The state after the copy, past a NUL:
    # its ms, each bucket's level at it, the feature's hold (binary, as Lua packs it).
    packed = pack_state([1_767_225_600_000, 60_000, 179_960, 40])
    state = packed.decode("utf-8", "surrogateescape")  # as the client's reader decodes
    d = Replies().decision(f"0|rate-limited|10|0|3|250|{copy}\0{state}")
    assert (d.ok, d.reason, d.retry_after_ms, d.cap_tokens) == (False, "rate-limited", 250, 1000)
    assert d.rate == (
        RateState("requests", 600, 60, 0, 60_000),  # 60,000 left after draining 10
        RateState("tokens", 90_000, 60, 20, 59_987),  # 179,960 held: 40 units free, 20 tokens
    )
    assert d.headers() == {
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "90000",
        "x-ratelimit-remaining-tokens": "20",
        "x-ratelimit-reset-tokens": "59.987s",
        "retry-after": "1",
        "retry-after-ms": "250",
    }
    empty = pack_state([1, 0, 0, 0]).decode("utf-8", "surrogateescape")
    other = Replies().decision(f"0|hard-cap-exceeded|1000|0||5|{copy}\0{empty}")
    assert other.retry_after_ms is None  # a wait only for a rate-limited refusal
    assert [s.remaining for s in other.rate] == [600, 90_000]  # no buckets yet: full
    assert "retry-after" not in other.headers()
