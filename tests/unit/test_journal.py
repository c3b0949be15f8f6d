"""The journal keeps what Redis counted lately, and gives it back once."""

from __future__ import annotations

from quota.journal import Fields, Journal


def event(n: int) -> Fields:
    return (f"id-{n}", "p", None, "f", "x", "m", n, 0, None, 1_700_000_000_000 + n)


def test_it_gives_back_the_recent_events_once_and_in_order() -> None:
    now = [0.0]
    journal = Journal(60, 3, clock=lambda: now[0])
    for n in range(4):  # bounded: the oldest goes
        journal.add(event(n))
        now[0] += 1
    now[0] = 61.5  # event 1 (at 1.0) is older than 60 s by now
    taken = journal.take()
    assert [(e.event_id, e.input_tokens) for e in taken] == [("id-2", 2), ("id-3", 3)]
    assert taken[0].occurred_at.timestamp() == 1_700_000_000.002
    assert journal.take() == []
