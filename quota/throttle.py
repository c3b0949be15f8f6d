"""A log line at most once per interval, with the count of those it stood for: an
outage must not write one WARNING per call (thousands a second)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Every:
    """`due` is the number of events since the last line when a line is due (at most
    once per ``seconds``), else 0. Thread-safe."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._next = 0.0
        self._count = 0

    def due(self) -> int:
        with self._lock:
            self._count += 1
            now = self._clock()
            if now < self._next:
                return 0
            self._next = now + self.seconds
            count, self._count = self._count, 0
            return count
