"""A circuit breaker: pure state, no I/O, the clock injected, so that the sync transport
and an asyncio one share it.

    closed ──(``failures`` in a row)──▶ open ──(``reset_seconds``)──▶ half-open
       ▲                                  ▲                               │
       └──────────(the probe succeeds)────┼───────(the probe fails)───────┘

While the circuit is not closed, `allow` answers False at once: callers decide by their
outage policy in microseconds instead of waiting for a connect timeout. After
``reset_seconds`` the transport's prober (a thread or a task of its own, never a
caller: a probe of a dead server costs milliseconds, of a hung one the whole socket
timeout) takes `probe_due`; its outcome closes or reopens the circuit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half-open"]


class Breaker:
    """Counts consecutive failures of one backend. Thread-safe; the closed path takes
    no lock (one attribute read per call)."""

    def __init__(
        self,
        failures: int,
        reset_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[State], None] | None = None,
    ) -> None:
        self.threshold = failures
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self.state: State = "closed"
        self.failures = 0  # consecutive, while closed
        self._opened_at = 0.0
        self._probing = False
        #: Whether it ever opened: a node that failed once may come back serving stale
        #: state (a restarted cluster primary), so its slots moving away is a failover.
        self.has_opened = False

    def allow(self) -> bool:
        """May a caller's call go to the backend now? Only while closed."""
        return self.state == "closed"

    def probe_in(self) -> float:
        """Seconds until a probe is due (0 if due now; the reset time if closed)."""
        with self._lock:
            if self.state == "closed":
                return self.reset_seconds
            return max(0.0, self._opened_at + self.reset_seconds - self._clock())

    def probe_due(self) -> bool:
        """Take the probe if one is due: the circuit turns half-open, and the prober's
        outcome (`success` or `failure`) closes or reopens it. One probe at a time."""
        with self._lock:
            if self.state == "closed" or self._probing:
                return False
            if self._clock() - self._opened_at < self.reset_seconds:
                return False
            self._probing = True
            if self.state != "half-open":
                self._set("half-open")
            return True

    def success(self) -> None:
        if self.state == "closed" and not self.failures:
            return
        with self._lock:
            self.failures = 0
            self._probing = False
            if self.state != "closed":
                self._set("closed")

    def failure(self) -> None:
        with self._lock:
            self._probing = False
            if self.state == "closed":
                self.failures += 1
                if self.failures < self.threshold:
                    return
            self.failures = 0
            self._opened_at = self._clock()
            self.has_opened = True
            if self.state != "open":
                self._set("open")

    def reset(self) -> None:
        """Close the circuit now (an operator's or a test's shortcut)."""
        self.success()

    def _set(self, state: State) -> None:
        self.state = state
        if self._on_change is not None:
            self._on_change(state)
