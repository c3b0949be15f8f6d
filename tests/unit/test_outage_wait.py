"""OutageWait: which failures a call waits out, how often it tries, and for how long."""

from __future__ import annotations

import pytest
import redis

from quota._calls import CircuitOpen, LostReply
from quota.outage_wait import PAUSES, OutageWait, waitable


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (redis.exceptions.ConnectionError("Error 111 connecting"), True),
        (CircuitOpen("Redis circuit open"), True),
        (redis.exceptions.BusyLoadingError("LOADING Redis is loading"), True),
        (redis.exceptions.ClusterError("still redirected after 5 tries"), True),
        (redis.exceptions.ResponseError("CLUSTERDOWN The cluster is down"), True),
        (redis.exceptions.ResponseError("MASTERDOWN Link with MASTER is down"), True),
        (redis.exceptions.ResponseError("BUSY Redis is busy running a script"), True),
        (LostReply("Redis connection lost"), True),
        (redis.exceptions.TimeoutError("Timeout reading from socket"), False),
        (redis.exceptions.ResponseError("ERR wrong number of arguments"), False),
        (redis.exceptions.ResponseError("NOSCRIPT No matching script"), False),
    ],
)
def test_what_is_waited_out(exc: Exception, expected: bool) -> None:
    assert waitable(exc) is expected


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pauses_grow_then_repeat_and_end_with_the_wait() -> None:
    clock = Clock()
    wait = OutageWait(1.0, clock)
    down = redis.exceptions.ConnectionError("refused")
    seen = []
    while (pause := wait.pause(down)) is not None:
        seen.append(pause)
        clock.now += pause
    assert seen[: len(PAUSES)] == list(PAUSES)
    assert all(p == PAUSES[-1] for p in seen[len(PAUSES) : -1])
    assert sum(seen) == pytest.approx(1.0)  # the last pause is cut to the deadline
    assert clock.now == pytest.approx(101.0)


def test_no_wait_and_unwaitable_failures_decide_at_once() -> None:
    clock = Clock()
    assert OutageWait(0.0, clock).pause(redis.exceptions.ConnectionError("x")) is None
    wait = OutageWait(5.0, clock)
    assert wait.pause(redis.exceptions.TimeoutError("hung")) is None
    assert wait.pause(redis.exceptions.ConnectionError("x")) == PAUSES[0]
