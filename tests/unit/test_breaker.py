"""The circuit breaker's states, on an injected clock: callers are let through only
while it is closed; the prober alone takes the half-open probe."""

from __future__ import annotations

from quota.breaker import Breaker, State


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(failures: int = 3, reset: float = 1.0) -> tuple[Breaker, Clock, list[State]]:
    clock, seen = Clock(), list[State]()
    return Breaker(failures, reset, clock=clock, on_change=seen.append), clock, seen


def test_opens_after_the_threshold_of_failures_in_a_row() -> None:
    b, _, seen = make(failures=3)
    b.failure()
    b.failure()
    b.success()  # a success in between starts the count again
    b.failure()
    b.failure()
    assert (b.state, b.allow()) == ("closed", True)
    b.failure()
    assert (b.state, b.allow(), seen) == ("open", False, ["open"])


def test_no_caller_passes_while_open_or_half_open_and_one_probe_at_a_time() -> None:
    b, clock, seen = make(failures=1, reset=1.0)
    b.failure()
    assert b.probe_in() == 1.0
    assert not b.probe_due()  # not before reset_seconds
    clock.now += 1.0
    assert b.probe_in() == 0.0
    assert b.probe_due()
    assert (b.state, b.allow()) == ("half-open", False)
    assert not b.probe_due()  # the probe is out: no second one
    b.failure()  # it failed: open again, for another reset_seconds
    assert (b.state, b.probe_in(), b.probe_due()) == ("open", 1.0, False)
    clock.now += 1.0
    assert b.probe_due()
    b.success()
    assert (b.state, b.allow(), seen) == (
        "closed",
        True,
        ["open", "half-open", "open", "half-open", "closed"],
    )
    assert not b.probe_due()  # closed: nothing to probe


def test_a_late_success_of_a_call_sent_before_the_circuit_opened_closes_it() -> None:
    b, _, _ = make(failures=1)
    b.failure()
    b.success()
    assert (b.state, b.failures) == ("closed", 0)
