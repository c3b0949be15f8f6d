"""What this process counted in Redis lately: replayed into the ledger if Redis loses
its data before the drain took it.

Without persistence, a Redis restart loses the events not yet drained, and the ports
rebuilt from the ledger would spend that usage again. Each gate keeps the events
Redis counted for it in the last ``seconds`` (bounded in number); when Redis turns out
to have lost its data (the function library is missing: a restart without
persistence, a flush), the gate writes them straight to the ledger, where those the
drain had stored already are recognised by their event id. Only a process that dies
together with Redis loses its usage. Pure: the gate does the I/O.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from quota.models import UsageEvent
from quota.periods import from_ms

# An event's values as the gate has them at hand (a tuple costs the hot path a tenth
# of a UsageEvent): event id, port, user, feature, provider, model, input and output
# tokens, request id, and its time in ms.
Fields = tuple[str, str, str | None, str, str, str, int, int, str | None, int]
Entry = tuple[float, Fields]


class Journal:
    def __init__(
        self, seconds: float, limit: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.seconds = seconds
        self._clock = clock
        self._entries: deque[Entry] = deque(maxlen=limit)
        self._lock = threading.Lock()

    def add(self, fields: Fields) -> None:
        """Called for every event Redis counted: a deque append (atomic; no lock)."""
        self._entries.append((self._clock(), fields))

    def take(self) -> list[UsageEvent]:
        """The events of the last ``seconds``, oldest first; the journal is emptied."""
        with self._lock:
            since = self._clock() - self.seconds
            entries, self._entries = self._entries, deque(maxlen=self._entries.maxlen)
        return [UsageEvent(*f[:9], from_ms(f[9])) for at, f in entries if at >= since]

    def __len__(self) -> int:
        return len(self._entries)
