"""reserve / commit / release: holds, leases, idempotency, a lost function library."""

from __future__ import annotations

import contextlib
import time

import pytest
import redis

import quota.core
from quota import BudgetExceeded, Gate, UnknownReservation
from quota.reservations import new_hex_id
from quota.scripts import library
from quota.topology import primaries


@pytest.fixture
def capped(gate: Gate) -> Gate:
    gate.set_budget(
        "p", enabled=True, soft_cap_tokens=800, hard_cap_tokens=1000, period="day", updated_by="u"
    )
    return gate


def commit(gate: Gate, rid: str | None, tokens: int, request_id: str | None = None) -> object:
    assert rid is not None
    return gate.commit(
        rid,
        input_tokens=tokens,
        output_tokens=0,
        provider="openai",
        model="gpt-4o",
        request_id=request_id,
    )


def test_reservations_count_against_the_hard_cap(capped: Gate) -> None:
    a = capped.reserve("p", 600, "ocr")
    assert a.ok
    assert a.reserved_tokens == 600
    b = capped.reserve("p", 401, "ocr")
    assert (b.ok, b.reason, b.reservation_id) == (False, "estimated-exceeds-cap", None)
    # check() keeps the seed's rule: usage only, holds reported beside it.
    c = capped.check("p", 401)
    assert (c.ok, c.reserved_tokens) == (True, 600)
    assert capped.reserve("p", 400, "ocr").ok


def test_commit_counts_actual_tokens_in_full_and_returns_the_hold(capped: Gate) -> None:
    d = capped.reserve("p", 100, "ocr", user_id="alice")
    result = commit(capped, d.reservation_id, 250)  # more than estimated: counted in full
    assert result.used_tokens == 250  # type: ignore[attr-defined]
    s = capped.status("p")
    assert (s.used_tokens, s.reserved_tokens) == (250, 0)
    assert capped.current_period_tokens("p", "ocr") == 250


def test_commit_and_release_twice_are_no_ops(capped: Gate) -> None:
    d = capped.reserve("p", 100, "ocr")
    first = commit(capped, d.reservation_id, 60)
    again = commit(capped, d.reservation_id, 60)
    assert (first.duplicate, again.duplicate) == (False, True)  # type: ignore[attr-defined]
    assert capped.release(d.reservation_id or "") is False
    assert capped.current_period_tokens("p") == 60

    e = capped.reserve("p", 100, "ocr")
    assert capped.release(e.reservation_id or "") is True
    assert capped.release(e.reservation_id or "") is False
    assert commit(capped, e.reservation_id, 10).duplicate  # type: ignore[attr-defined]
    assert capped.status("p").reserved_tokens == 0
    assert capped.current_period_tokens("p") == 60


@pytest.mark.parametrize(
    "rid",
    [
        "",
        "nope",
        "0" * 32 + "|100|ocr||p",  # well formed, never reserved
        "z" * 32 + "|100|ocr||p",
        "0" * 31 + "|100|ocr||p",
        "0" * 32 + "|-1|ocr||p",
        "0" * 32 + "|100|ocr||bad port",
        "0" * 32 + "|100|ocr|p",
        "0" * 32 + ".p",  # an id of the earlier format
        5,
        ["0" * 32 + "|100|ocr||p"],  # not even hashable
    ],
)
def test_unknown_reservations_raise(capped: Gate, rid: object) -> None:
    with pytest.raises(UnknownReservation):
        capped.release(rid)  # type: ignore[arg-type]
    with pytest.raises(UnknownReservation):
        commit(capped, rid, 1)  # type: ignore[arg-type]
    assert capped.current_period_tokens("p") == 0


def test_a_reservation_id_cannot_reach_another_port(capped: Gate) -> None:
    d = capped.reserve("p", 100, "ocr")
    assert d.reservation_id is not None
    forged = d.reservation_id.rsplit("|", 1)[0] + "|q"
    with pytest.raises(UnknownReservation):
        capped.release(forged)
    # Nor take back more (or less) than it holds: its member names its tokens.
    hex_id, _, rest = d.reservation_id.partition("|")
    more = f"{hex_id}|1000|{rest.split('|', 1)[1]}"
    with pytest.raises(UnknownReservation):
        capped.release(more)
    with pytest.raises(UnknownReservation):
        commit(capped, more, 5)
    assert capped.status("p").reserved_tokens == 100
    assert capped.current_period_tokens("p") == 0


def test_a_resent_reserve_holds_once(capped: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reserve whose reply was lost goes again with the same id: one hold, and the
    second answer reports the same reserved tokens as the first."""
    capped.reserve("p", 50, "ocr")  # someone else's hold
    fixed = new_hex_id(100, "ocr", None, "p")  # the resend carries the first one's id
    monkeypatch.setattr(quota.core, "new_hex_id", lambda *args, **kwargs: fixed)
    first = capped.reserve("p", 100, "ocr")
    again = capped.reserve("p", 100, "ocr")
    assert first.reservation_id == again.reservation_id
    assert first.ok
    assert again.ok
    assert first.reserved_tokens == again.reserved_tokens == 150
    assert capped.status("p").reserved_tokens == 150
    commit(capped, first.reservation_id, 10)
    assert capped.status("p").reserved_tokens == 50


def test_lease_expiry_returns_the_held_tokens(settings: object, capped: Gate) -> None:
    with Gate(capped.settings.model_copy(update={"lease_seconds": 0.2})) as short:
        d = short.reserve("p", 1000, "ocr")
        assert d.ok
        assert not short.reserve("p", 1, "ocr").ok
        time.sleep(0.3)
        assert short.check("p", 0).reserved_tokens == 0  # read-only view already excludes it
        again = short.reserve("p", 1000, "ocr")
        assert again.ok
        assert again.reserved_tokens == 1000
        # Committing the expired one still counts the usage (the call happened) and
        # does not return its hold a second time.
        late = commit(short, d.reservation_id, 5)
        assert late.lease_expired  # type: ignore[attr-defined]
        assert short.status("p").reserved_tokens == 1000
        assert short.current_period_tokens("p") == 5


def test_a_lapsed_reservation_is_known_until_forgotten(capped: Gate, r: redis.Redis) -> None:
    """A purge returns an ended lease's hold; the reservation is then remembered as
    long as a settled one: released once, then a no-op; forgotten afterwards."""
    settings = capped.settings.model_copy(update={"lease_seconds": 0.2, "settled_seconds": 2})
    pk = capped.layout.for_port("p")
    with Gate(settings) as short:
        a = short.reserve("p", 300, "ocr")
        b = short.reserve("p", 300, "ocr")
        time.sleep(0.3)
        assert short.reserve("p", 10, "ocr").reserved_tokens == 10  # the purge
        assert r.zcard(pk.lapsed) == 2
        assert short.release(a.reservation_id or "") is True  # late, but known
        assert short.release(a.reservation_id or "") is False
        assert commit(short, a.reservation_id, 5).duplicate  # type: ignore[attr-defined]
        assert short.status("p").reserved_tokens == 10  # nothing returned twice
        assert r.zcard(pk.lapsed) == 1
        time.sleep(2.3)  # b's memory, and the lapsed set with it, are gone
        assert r.exists(pk.lapsed) == 0
        with Gate(settings) as elsewhere, pytest.raises(UnknownReservation):
            commit(elsewhere, b.reservation_id, 5)
        assert short.current_period_tokens("p") == 0


def test_a_commit_that_counts_nothing_leaves_no_event(capped: Gate, r: redis.Redis) -> None:
    d = capped.reserve("p", 100, "ocr")
    commit(capped, d.reservation_id, 10)
    stream = capped.layout.for_port("p").stream
    events = r.xlen(stream)
    assert commit(capped, d.reservation_id, 10).duplicate  # type: ignore[attr-defined]
    with Gate(capped.settings) as elsewhere, pytest.raises(UnknownReservation):
        commit(elsewhere, "0" * 32 + "|100|ocr||p", 10)
    assert r.xlen(stream) == events
    assert capped.current_period_tokens("p") == 10


def test_a_commit_after_its_lease_returns_the_hold_once(capped: Gate) -> None:
    """No reserve purged the ended lease before the commit: the commit returns it."""
    with Gate(capped.settings.model_copy(update={"lease_seconds": 0.2})) as short:
        d = short.reserve("p", 600, "ocr")
        time.sleep(0.3)
        late = commit(short, d.reservation_id, 5)
        assert not late.lease_expired  # type: ignore[attr-defined]
        assert short.status("p").reserved_tokens == 0
        assert short.reserve("p", 990, "ocr").reserved_tokens == 990  # returned once


def test_context_manager_commits_or_releases(capped: Gate) -> None:
    with capped.reservation("p", 300, "chat") as r:
        r.commit(input_tokens=100, output_tokens=50, provider="openai", model="gpt-4o")
    assert capped.current_period_tokens("p") == 150
    held: list[int] = []

    def failing_call() -> None:
        with capped.reservation("p", 300, "chat"):
            held.append(capped.status("p").reserved_tokens)
            raise RuntimeError("the LLM call failed")

    with pytest.raises(RuntimeError):
        failing_call()
    assert held == [300]
    assert capped.status("p").reserved_tokens == 0
    with pytest.raises(BudgetExceeded) as refused:
        capped.reservation("p", 10**6, "chat").__enter__()
    assert refused.value.decision.reason == "estimated-exceeds-cap"  # type: ignore[attr-defined]


def test_losing_the_function_library_mid_run_surfaces_no_error(
    capped: Gate, r: redis.Redis
) -> None:
    """A restart without persistence, a failover or FUNCTION FLUSH: reloaded silently."""
    for i in range(20):
        if i % 5 == 0:
            for node in primaries(r):  # every primary of a cluster
                with contextlib.suppress(redis.ResponseError):  # one the gate did not call
                    node.function_delete(library().name)
        d = capped.reserve("p", 10, "ocr")
        assert d.ok
        commit(capped, d.reservation_id, 10)
        capped.record(
            port_id="p", feature="ocr", provider="x", model="y", input_tokens=1, output_tokens=0
        )
        capped.check("p", 1)
        capped.release(capped.reserve("p", 1, "ocr").reservation_id or "")
    assert capped.current_period_tokens("p") == 20 * 11


def test_an_expired_lease_behind_a_longer_one_is_returned(capped: Gate) -> None:
    """Leases of different lengths (two gates): only the ended one's hold comes back."""
    long_hold = capped.reserve("p", 300, "ocr")  # the default 10-minute lease
    with Gate(capped.settings.model_copy(update={"lease_seconds": 0.2})) as short:
        short_hold = short.reserve("p", 500, "ocr")
        assert short_hold.reserved_tokens == 800
        time.sleep(0.3)
        assert short.check("p", 0).reserved_tokens == 300
        assert [d.reserved_tokens for d in short.check_many([("p", 0), ("q", 0)])] == [300, 0]
        assert short.reserve("p", 700, "ocr").reserved_tokens == 1000  # 300 + 700, not 1500
        assert not short.reserve("p", 1, "ocr").ok
    assert capped.release(long_hold.reservation_id or "") is True
    assert capped.status("p").reserved_tokens == 700


def test_a_reservation_redis_lost_is_still_counted_by_its_process(
    capped: Gate, r: redis.Redis
) -> None:
    d = capped.reserve("p", 100, "ocr", user_id="erin")
    assert d.reservation_id
    r.delete(capped.layout.for_port("p").open)  # as after a flush
    result = commit(capped, d.reservation_id, 70)
    assert result.stored  # type: ignore[attr-defined]
    assert capped.current_period_tokens("p") == 70
    # Another process (another gate) cannot vouch for it: still an unknown reservation.
    other = capped.reserve("p", 10, "ocr")
    assert other.reservation_id
    r.delete(capped.layout.for_port("p").open)
    with Gate(capped.settings) as elsewhere, pytest.raises(UnknownReservation):
        commit(elsewhere, other.reservation_id, 5)
