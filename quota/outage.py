"""What a decision answers while Redis cannot be asked: the outage policy.

- ``closed`` (the default) refuses: no port can overspend, and no LLM call is made.
- ``open`` allows: the service keeps working; usage is still recorded (Postgres, or
  the spool) and counted when Redis returns.
- ``allowance`` allows until this process has admitted ``allowance`` estimated tokens
  for the port during this outage, then refuses: the overshoot is bounded by the
  allowance times the number of processes.

A budget may name its own policy (`Budget.outage_policy`); the others follow
``QUOTA_OUTAGE_POLICY``. The overrides are read from Postgres when the gate starts and at
most once a minute during an outage, always on a thread of their own: no decision
waits for Postgres (which may be down too). No I/O here: the gate passes a loader.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from quota._exceptions import BackendError
from quota.settings import OutagePolicy

log = logging.getLogger("quota")

# How long the per-budget overrides read during an outage are trusted, and how long a
# failed read is not tried again.
_OVERRIDES_SECONDS = 60.0
_RETRY_SECONDS = 10.0

Loader = Callable[[], dict[str, OutagePolicy]]


class Outage:
    """The policy of each port, and the allowance each has used in this outage."""

    def __init__(
        self,
        default: OutagePolicy,
        allowance: int,
        load_overrides: Loader,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.default = default
        self.allowance = allowance
        self._load = load_overrides
        self._clock = clock
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._overrides: dict[str, OutagePolicy] = {}
        self._fresh_until = 0.0
        self._admitted: dict[str, int] = {}

    def policy(self, port: str) -> OutagePolicy:
        if self._clock() >= self._fresh_until:
            self.refresh()
        return self._overrides.get(port, self.default)

    def refresh(self) -> None:
        """Read the overrides again, on a thread of its own (one at a time)."""
        if not self._refreshing.acquire(blocking=False):
            return
        self._fresh_until = self._clock() + _RETRY_SECONDS  # until this read says more
        threading.Thread(target=self._refresh, name="quota-outage-policies", daemon=True).start()

    def _refresh(self) -> None:
        try:
            self._overrides = self._load()
            self._fresh_until = self._clock() + _OVERRIDES_SECONDS
        except BackendError as exc:
            log.warning("outage policies of budgets not read (%s): using %s", exc, self.default)
        finally:
            self._refreshing.release()

    def note(self, port: str, policy: OutagePolicy | None) -> None:
        """This process changed a budget's policy: known at once (others within a minute)."""
        overrides = dict(self._overrides)
        if policy is None:
            overrides.pop(port, None)
        else:
            overrides[port] = policy
        self._overrides = overrides

    def admit(self, port: str, estimate: int) -> tuple[bool, OutagePolicy]:
        """Is this decision allowed during the outage? Counts the estimate against the
        port's allowance when the policy is ``allowance`` and it is admitted."""
        policy = self.policy(port)
        if policy == "closed":
            return False, policy
        if policy == "open":
            return True, policy
        with self._lock:
            spent = self._admitted.get(port, 0)
            if spent + estimate > self.allowance:
                return False, policy
            self._admitted[port] = spent + estimate
        return True, policy

    def ended(self) -> None:
        """Redis answers again: the next outage starts with whole allowances."""
        with self._lock:
            self._admitted.clear()
