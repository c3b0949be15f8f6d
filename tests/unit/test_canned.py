"""The gate's protocol driven by a canned transport: no server, no private pokes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from quota import Gate, Settings, UnknownReservation
from quota.canned import CannedTransport
from quota.periods import Windows, to_ms

BUDGET = "1|800|1000|day"
OK_RESERVE = f"1||100|0|||{BUDGET}"


def test_a_clock_correction_is_adopted_and_the_call_sent_again(settings: Settings) -> None:
    server = datetime(2031, 5, 17, 12, tzinfo=UTC)
    canned = CannedTransport({"reserve": [f"-2|{to_ms(server)}", OK_RESERVE]})
    with Gate(settings, transport=canned) as gate:
        d = gate.reserve("p", 100, "ocr")
    assert (d.ok, d.used_tokens, d.reserved_tokens, d.cap_tokens) == (True, 100, 100, 1000)
    assert d.reservation_id
    (_, _, args1), (_, keys2, args2) = canned.calls
    w = Windows.at(server)
    assert args2[0] == w.day  # the second call names the server's day ...
    assert keys2[1].split(":")[-2] == w.day_id  # ... and its counters
    assert args1[0] != args2[0]
    assert args1[1:] == args2[1:]  # the same reservation, sent again


def test_a_refusal_carries_the_reason_and_no_reservation(settings: Settings) -> None:
    canned = CannedTransport({"reserve": [f"0|hard-cap-exceeded|1000|0|||{BUDGET}"]})
    with Gate(settings, transport=canned) as gate:
        d = gate.reserve("p", 5, "ocr")
    assert (d.ok, d.reason, d.remaining, d.reservation_id) == (False, "hard-cap-exceeded", 0, None)


def test_a_commit_redis_does_not_know_raises_for_a_foreign_reservation(
    settings: Settings,
) -> None:
    canned = CannedTransport({"reserve": [OK_RESERVE], "commit": ["-3"]})
    with Gate(settings, transport=canned) as gate:
        rid = gate.reserve("p", 100, "ocr").reservation_id
        assert rid
    with Gate(settings, transport=canned) as other, pytest.raises(UnknownReservation):
        other.commit(rid, input_tokens=1, output_tokens=1, provider="x", model="m")
    assert [op for op, _, _ in canned.calls] == ["reserve", "commit"]
