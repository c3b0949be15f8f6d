"""The declared KEYS/ARGV layouts against what the Lua uses and what the gate sends.

The gate's calls are captured by the canned transport, so every builder of the core is
checked against quota/layouts.py by name: a position that drifts fails here, not as a
wrong counter in Redis."""

from __future__ import annotations

import re

import pytest

from quota import Gate, Settings
from quota.canned import CannedTransport
from quota.core import budget_copy
from quota.entries import EVENT_FIELD, unpack
from quota.keys import KeyLayout
from quota.layouts import LAYOUTS, Layout, fill, unused
from quota.models import Budget
from quota.reservations import parse_reservation_id
from quota.scripts import OPERATIONS, library

BUDGET = "1|800|1000|day"
OK_RESERVE = f"1||100|0|||{BUDGET}"


def _event(value: str) -> list[str]:
    return unpack("1-0", [EVENT_FIELD, value])[0]


def test_every_function_has_a_layout_and_the_built_library_no_placeholder() -> None:
    assert set(LAYOUTS) == set(OPERATIONS)
    code = "\n".join(line.partition("--")[0] for line in library().source.split("\n"))
    assert re.search(r"\$[a-z_]", code) is None  # (a bare $ is a Lua pattern anchor)
    assert re.search(r"KEYS\[5\], ARGV\[5\]\)", code)  # commit's append_event(stream, event)


def test_a_fragment_naming_an_undeclared_position_is_refused() -> None:
    layout = Layout(("port", "open"), ("member",))
    assert fill("return KEYS[$open] -- not $here", layout, "t") == "return KEYS[2] -- not $here"
    with pytest.raises(ValueError, match=r"t: \$closed is not in its layout"):
        fill("return KEYS[$closed]", layout, "t")
    assert unused("return ARGV[$member]", layout) == {"open"}


def test_check_and_reserve_are_sent_as_declared(settings: Settings) -> None:
    canned = CannedTransport({"check": [OK_RESERVE], "reserve": [OK_RESERVE]})
    with Gate(settings, transport=canned) as gate:
        gate.check("p", 7)
        rid = gate.reserve("p", 9, "ocr")
    assert rid.reservation_id
    pk = KeyLayout(settings.key_prefix, settings.shards).for_port("p")
    (_, ck, ca), (_, rk, ra) = canned.calls
    check = LAYOUTS["check"].named(ck, ca)
    assert (check["port"], check["open"], check["estimate"], check["feature"]) == (
        pk.budget, pk.open, 7, "",
    )  # fmt: skip
    assert [check[f"{p}_usage"] for p in ("day", "week", "month")] == list(
        pk.usage_all(gate._now_windows())
    )
    reserve = LAYOUTS["reserve"].named(rk, ra)
    ref = parse_reservation_id(rid.reservation_id)
    assert (reserve["open"], reserve["lapsed"], reserve["estimate"]) == (pk.open, pk.lapsed, 9)
    assert reserve["member"] == ref.member
    assert reserve["lease_ms"] == int(settings.lease_seconds * 1000)
    assert reserve["lapsed_ms"] == settings.settled_seconds * 1000
    assert "feature" not in reserve  # sent only to ports known to have caps or limits


def test_a_port_with_feature_caps_gets_its_feature(settings: Settings) -> None:
    capped = f"1||100|0|0||{BUDGET}||ocr=50"  # a copy with a feature cap
    canned = CannedTransport({"reserve": ["-4"], "reserve_x": [capped, capped]})
    with Gate(settings, transport=canned) as gate:
        first = gate.reserve("p", 9, "ocr")  # unknown: sent without, asked for, sent again
        second = gate.reserve("p", 9, "ocr")  # known now: sent with it at once
    assert (first.ok, second.ok) == (True, True)
    assert [op for op, _, _ in canned.calls] == ["reserve", "reserve_x", "reserve_x"]
    (_, k1, a1), (_, k2, a2), _ = canned.calls
    assert k1 == k2
    assert a2 == (*a1, "ocr")  # the same reservation, its feature added
    assert LAYOUTS["reserve"].named(k2, a2)["feature"] == "ocr"


@pytest.mark.parametrize("request_id", [None, "req-1"])
def test_commit_and_record_are_sent_as_declared(settings: Settings, request_id: str | None) -> None:
    canned = CannedTransport(
        {"reserve": [OK_RESERVE], "commit": ["1|120|0|0"], "record": ["1|140|0|0"]}
    )
    with Gate(settings, transport=canned) as gate:
        rid = gate.reserve("p", 9, "ocr").reservation_id
        assert rid
        gate.commit(rid, input_tokens=3, output_tokens=4, provider="x", model="m",
                    request_id=request_id)  # fmt: skip
        gate.record(port_id="p", feature="chat", provider="x", model="m", input_tokens=5,
                    output_tokens=6, request_id=request_id and "req-2")  # fmt: skip
    pk = KeyLayout(settings.key_prefix, settings.shards).for_port("p")
    ref = parse_reservation_id(rid)
    _, (_, kk, ka), (_, rk, ra) = canned.calls
    commit = LAYOUTS["commit"].named(kk, ka)
    assert (commit["stream"], commit["open"], commit["lapsed"]) == (pk.stream, pk.open, pk.lapsed)
    assert commit["settled"] == pk.settled(ref.hex_id)
    assert (commit["member"], commit["total"], commit["feature"]) == (ref.member, 7, "ocr")
    assert (commit["settled_s"], commit["unbudgeted"]) == (settings.settled_seconds, "0")
    assert _event(commit["event"])[0] == ref.event_id
    record = LAYOUTS["record"].named(rk, ra)
    assert (record["stream"], record["feature"], record["total"]) == (pk.stream, "chat", 11)
    assert (_event(record["event"])[6], record["unbudgeted"]) == ("5", "0")
    if request_id is None:
        assert "request" not in commit
        assert "request" not in record
    else:
        assert commit["request"] == pk.idempotency("req-1")
        assert record["request"] == pk.idempotency("req-2")
        assert commit["request_s"] == record["request_s"] == settings.idempotency_seconds


def test_release_check_many_and_the_budget_copy_are_sent_as_declared(
    settings: Settings,
) -> None:
    canned = CannedTransport(
        {"reserve": [OK_RESERVE], "release": ["1"], "check_many": [[OK_RESERVE, OK_RESERVE]]}
    )
    layout = KeyLayout(settings.key_prefix, 1)
    settings = settings.model_copy(update={"shards": 1})  # both ports in one call
    with Gate(settings, transport=canned) as gate:
        rid = gate.reserve("p", 9, "ocr").reservation_id
        assert rid
        gate.release(rid)
        gate.check_many([("p", 3), ("q", 4)])
        copy = budget_copy(Budget(enabled=True, soft_cap_tokens=5, hard_cap_tokens=8), 7)
    pk, qk = layout.for_port("p"), layout.for_port("q")
    _, (_, lk, la), (_, mk, ma) = canned.calls
    release = LAYOUTS["release"].named(lk, la)
    ref = parse_reservation_id(rid)
    assert release == {
        "port": pk.budget, "open": pk.open, "lapsed": pk.lapsed,
        "settled": pk.settled(ref.hex_id), "member": ref.member,
        "settled_s": settings.settled_seconds, "feature": "ocr",
    }  # fmt: skip
    many = LAYOUTS["check_many"]
    pos = many.positions()
    size, first = pos["per_port_keys"], pos["args_before_ports"]
    assert len(mk) == 2 * size
    assert len(ma) == first + 2 * pos["per_port_argc"]
    assert (mk[pos["port"] - 1], mk[size + pos["port"] - 1]) == (pk.budget, qk.budget)
    assert (mk[pos["open"] - 1], mk[size + pos["open"] - 1]) == (pk.open, qk.open)
    assert ma[first + pos["estimate"] - 1 :] == (3, 4)
    put = LAYOUTS["budget_put"].named((pk.budget,), copy)
    assert put == {
        "port": pk.budget, "version": 7, "enabled": 1, "soft": 5, "hard": 8, "period": "month",
        "limits": "", "caps": "",
    }  # fmt: skip
