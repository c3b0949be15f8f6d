"""How long a call that found Redis unreachable waits for it to answer again.

With ``QUOTA_OUTAGE_WAIT_SECONDS`` > 0, a decision or a usage report whose Redis call
failed is tried again after short pauses until Redis answers (a replica promoted by a
Cluster or Sentinel failover, a restarted server) or that long has passed since the
first failure; only then does the outage policy decide (or the fallback store the
usage). Latency for exactness: a failover costs the calls it catches its length, not a
policy decision. A timeout is not waited out: a hung server is not coming back sooner
for being asked again. Pure: the gates sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from quota._calls import LostReply
from quota.scripts import is_unavailable

#: The pauses between tries (seconds): short first (a refused connection while a
#: breaker is still closed, a map already read again), then this last one until the end.
PAUSES = (0.01, 0.02, 0.05, 0.1)


def waitable(exc: BaseException) -> bool:
    """True for a failure that ends once Redis is back or a replica has taken over: a
    connection refused or dropped, the breaker open, no node serving the slot, redirects
    going round, or a server saying it cannot serve yet (LOADING, BUSY, MASTERDOWN,
    CLUSTERDOWN). Every script may run again (quota/_calls.py sends a call again on a
    dropped connection already): a reply lost with its connection is waited out too,
    a timeout is not."""
    if isinstance(exc, redis.exceptions.TimeoutError):
        return isinstance(exc, LostReply)
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.ClusterError):
        return True
    return isinstance(exc, redis.exceptions.ResponseError) and (
        is_unavailable(exc) or str(exc).startswith("CLUSTERDOWN")
    )


class OutageWait:
    """One call's wait: `pause` says how long to sleep before the next try, or None
    once ``seconds`` have passed since it was made (or the failure is not waitable)."""

    __slots__ = ("_clock", "_tries", "_until")

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until = clock() + seconds
        self._tries = 0

    def pause(self, exc: BaseException) -> float | None:
        left = self._until - self._clock()
        if left <= 0 or not waitable(exc):
            return None
        pause = PAUSES[min(self._tries, len(PAUSES) - 1)]
        self._tries += 1
        return min(pause, left)
