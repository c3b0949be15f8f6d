"""The usage path past Redis, shared by `Gate` and `AsyncGate` (which runs it in a
thread): events written straight to the Postgres ledger, else appended to the local
spool, else logged in full; the spool and the journal replayed into the ledger; soft-cap
alerts stored. Blocking I/O, no Redis: what the fallback wrote is owed to Redis, and
each gate pays that with its own I/O.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections import deque
from datetime import timedelta
from typing import NamedTuple

from quota._exceptions import BackendError, DatabaseUnavailable
from quota.core import SoftCapCallback
from quota.journal import Journal
from quota.models import SoftCapAlert, UsageEvent, UsageResult
from quota.reservations import ReservationRef
from quota.settings import Settings
from quota.spool import Spool
from quota.spool import encode as spool_line
from quota.store import Store
from quota.throttle import Every

log = logging.getLogger("quota")

# Fallback writes whose effect Redis is still owed, at most; older ones are left to
# reconciliation (and their holds to their leases).
OWED_LIMIT = 100_000
# Journal events written to the ledger per transaction after Redis lost its data.
_REPLAY_CHUNK = 250
# How long each chunk of a journal replay keeps the loss's hold alive, at least.
_HOLD_CHUNK_MS = 1000
_REPLAY_TRIES = 5
# A failed spool replay is not tried again sooner than this.
_REPLAY_SECONDS = 1.0


class Owed(NamedTuple):
    """A commit the fallback stored (Postgres or spool) whose reservation Redis still
    holds: settled there with its usage once Redis answers. (Reconciliation counts
    every direct write in the counters too, from ledger_direct, whoever wrote it.)"""

    event: UsageEvent
    ref: ReservationRef


class Fallback:
    """Mixed into both gates: the attributes below are theirs (quota/core.py)."""

    store: Store
    on_soft_cap: SoftCapCallback | None
    settings: Settings
    _spool: Spool
    _spooled: bool
    _dedupe_window: timedelta
    _fallback_log: Every
    _spool_log: Every
    _alert_log: Every
    _journal: Journal
    _replays: list[threading.Thread]

    def _init_fallback(self) -> None:
        self._replay_after = 0.0
        self._replay_lock = threading.Lock()
        self._owed: deque[Owed] = deque(maxlen=OWED_LIMIT)

    def _keep_hold(self, ms: int) -> None:
        """Keep a loss's hold alive ``ms`` more (the gate's Redis I/O)."""
        raise NotImplementedError

    def _store_alert(self, alert: SoftCapAlert) -> None:
        """Log and store a soft-cap alert, then call the owner's hook. Blocking."""
        self._announce(alert)
        try:
            self.store.save_alert(alert)
        except BackendError as exc:
            self._alert_not_stored(alert, exc)
        self._call_hook(alert)

    def _announce(self, alert: SoftCapAlert) -> None:
        log.warning(
            "port %s is above its soft cap: %d of %d tokens this %s",
            alert.port_id, alert.used_tokens, alert.soft_cap_tokens, alert.period,
        )  # fmt: skip

    def _alert_not_stored(self, alert: SoftCapAlert, exc: BackendError) -> None:
        # One line, not a traceback per alert, while Postgres is down.
        if n := self._alert_log.due():
            log.error("%d soft-cap alert(s) not stored (last: %s): %s", n, alert.port_id, exc)

    def _call_hook(self, alert: SoftCapAlert) -> None:
        if self.on_soft_cap is not None:
            try:
                self.on_soft_cap(alert)
            except Exception:
                # The caller's hook must not fail the usage report that triggered it.
                log.exception("on_soft_cap callback failed for %s", alert.port_id)

    def _fallback(
        self, event: UsageEvent, cause: BaseException, ref: ReservationRef | None = None
    ) -> UsageResult:
        """Redis could not be asked: write the event straight to the ledger, else to the
        spool, else log it in full. What it wrote is owed to Redis."""
        total = event.total_tokens
        try:
            fresh = self.store.insert_event(event, self._dedupe_window)
        except DatabaseUnavailable as exc:
            try:
                self._spool.append(event)
            except OSError as err:
                payload = {
                    **dataclasses.asdict(event),
                    "occurred_at": event.occurred_at.isoformat(),
                }
                log.error(
                    "usage event NOT STORED (Redis: %s; Postgres: %s; spool: %s): %s",
                    cause,
                    exc,
                    err,
                    json.dumps(payload, sort_keys=True),
                )
                return UsageResult(
                    stored=False, duplicate=False, backend="none", total_tokens=total
                )
            self._spooled = True
            if n := self._spool_log.due():
                log.warning(
                    "Redis (%s) and Postgres (%s) unavailable: %d usage events spooled",
                    cause,
                    exc,
                    n,
                )
            self._owe(event, ref)
            return UsageResult(
                stored=True,
                duplicate=False,
                backend="spool",
                total_tokens=total,
                event_id=event.event_id,
            )
        if n := self._fallback_log.due():
            log.warning("Redis unavailable (%s): %d usage events written to Postgres", cause, n)
        self._owe(event, ref)
        if self._spooled:
            self._replay_spool()
        return UsageResult(
            stored=True,
            duplicate=not fresh,
            backend="postgres",
            total_tokens=total,
            event_id=event.event_id if fresh else None,
        )

    def _start_replay(self, events: list[UsageEvent]) -> None:
        """`_replay_journal` on a thread of its own (not an executor's: queued behind
        fallback writes there, a replay could start after a loss's hold ended)."""
        replay = threading.Thread(
            target=self._replay_journal, args=(events,), name="quota-journal", daemon=True
        )
        self._replays = [t for t in self._replays if t.is_alive()] + [replay]
        replay.start()

    def _failed_over(self, slots: object = None) -> None:
        """A replica took over from a primary that failed (on a Cluster, the primary of
        ``slots``): Redis replicates asynchronously, so the last writes that primary
        acknowledged may be missing on the replica, counters and stream entries alike.
        The ledger takes what this gate counted lately (it drops what the drain stored
        already); the drain job then reconciles those ports' counters to it."""
        events = self._journal.take()
        if events:
            log.warning(
                "a Redis primary failed over: its last %d events replayed into the ledger",
                len(events),
            )
            self._start_replay(events)

    def _durable(self, event: UsageEvent) -> None:
        """Redis counted ``event`` but no replica acknowledged it (QUOTA_REPLICA_ACK): a
        failover may lose it there, so the ledger takes it now (the drain drops its
        stream twin by event id), else the spool. Nothing is owed to Redis."""
        try:
            self.store.insert_events([event])
        except BackendError as exc:
            log.warning("usage no replica acknowledged, and Postgres failed (%s): spooled", exc)
            self._spool_all([event])

    def _replay_journal(self, events: list[UsageEvent]) -> None:
        """The journal into the ledger (what the drain stored already is recognised by
        its event id), in transactions small enough for QUOTA_DATABASE_TIMEOUT. What
        Postgres does not take goes to the spool."""
        written = 0
        chunk_ms = max(_HOLD_CHUNK_MS, int(2000 * self.settings.database_timeout))
        for i in range(0, len(events), _REPLAY_CHUNK):
            for attempt in range(_REPLAY_TRIES):
                self._keep_hold(chunk_ms)
                try:
                    written += self.store.insert_events(events[i : i + _REPLAY_CHUNK])
                    break
                except BackendError as exc:
                    # Every gate replays at once: a timeout may be their lock, not an
                    # outage, and a spooled event is missing when ports are rebuilt.
                    if attempt + 1 == _REPLAY_TRIES:
                        log.error("Redis lost its data and Postgres failed (%s): spooling", exc)
                        self._spool_all(events[i:])
                        return
                    time.sleep(0.1 * 2**attempt)
        log.warning(
            "Redis lost its data: %d of this process's last %d events were not in "
            "the ledger and are now",
            written,
            len(events),
        )

    def _spool_all(self, events: list[UsageEvent]) -> None:
        for e in events:
            try:
                self._spool.append(e)
                self._spooled = True
            except OSError:
                log.error("usage event NOT STORED: %s", spool_line(e))

    def _owe(self, event: UsageEvent, ref: ReservationRef | None) -> None:
        if ref is None or ref.degraded:
            return  # no hold in Redis: reconciliation alone counts its usage
        if len(self._owed) == self._owed.maxlen and self._fallback_log.due():
            log.warning("more than %d fallback writes owed to Redis: reconcile", OWED_LIMIT)
        self._owed.append(Owed(event, ref))

    def _replay_spool(self) -> None:
        """Move spooled events into Postgres (in a thread of its own, at most one at a
        time and one try a second), as direct rows that reconciliation then counts."""
        now = time.monotonic()
        if now < self._replay_after or not self._replay_lock.acquire(blocking=False):
            return
        self._replay_after = now + _REPLAY_SECONDS

        def replay() -> None:
            try:
                n = self._spool.replay(lambda e: self.store.insert_event(e, self._dedupe_window))
                self._spooled = self._spool.pending()
                if n:
                    log.warning("replayed %d spooled usage events into Postgres", n)
            except BackendError as exc:
                log.warning("spool not replayed yet: %s", exc)
            finally:
                self._replay_lock.release()

        threading.Thread(target=replay, name="quota-spool-replay", daemon=True).start()
