"""What `Gate` and `AsyncGate` share, without I/O: the keys of a port and of its
period, the clock (corrected by the server's), each function's KEYS and ARGV, what
its reply means, and the decisions of the outage policy. The two gates are shells over
this: they validate, build here, drive their own I/O, and interpret here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

from quota import metrics
from quota import validation as v
from quota._exceptions import DatabaseUnavailable, InvalidInput, UnknownReservation
from quota.breaker import Breaker, State
from quota.counters import counter_writes, fold_days
from quota.decisions import state_of
from quota.entries import event_value
from quota.journal import Journal
from quota.keys import KeyLayout, PortKeys
from quota.models import (
    Budget,
    Decision,
    RateLimit,
    Reason,
    SoftCapAlert,
    Status,
    UsageEvent,
)
from quota.outage import Loader, Outage
from quota.periods import Period, Windows, from_ms, period_end, period_start
from quota.ratelimits import caps_spec, spec
from quota.replies import CLOCK, NO_BUDGET, OK, UNKNOWN, Replies, Terms, has_extras
from quota.reservations import (
    RecentReservations,
    ReservationRef,
    new_hex_id,
    parse_reservation_id,
    reservation_id,
)
from quota.scripts import library
from quota.settings import OutagePolicy, Settings
from quota.spool import Spool
from quota.throttle import Every

if TYPE_CHECKING:  # the shells own the stores; the core only asks them
    from quota.store import Store

log = logging.getLogger("quota")

# A budget miss and a clock correction each need one retry; more means trouble.
ATTEMPTS = 4
# Reservations this process made, remembered so that a commit Redis calls unknown
# (Redis lost it) is still counted.
_LOCAL_RESERVATIONS = 100_000
# Events the journal keeps at the most (its seconds bound it too).
_JOURNAL_LIMIT = 200_000
# How often a gate looks whether Redis lost its data (one GET of the epoch key).
EPOCH_SECONDS = 1.0
# After a loss: long enough for every gate to look at the epoch (each EPOCH_SECONDS)
# and start its replay, which then keeps the hold alive chunk by chunk.
HOLD_MS = 2500
# At most one fallback WARNING per this many seconds (with the count it stands for).
_LOG_SECONDS = 10.0

SoftCapCallback = Callable[[SoftCapAlert], None]
#: What a period-keyed function's reply asks of its driver: nothing more (``done``),
#: the same call again (``retry``: the clock was corrected), or the budget copy first.
Next = Literal["done", "retry", "budget"]


class _PeriodKeys(NamedTuple):
    """A port's keys for one day: those every period-keyed function starts with (the
    port hash, then its day/week/month counters), and check_many's (those, then the
    open set)."""

    windows: Windows
    leading: tuple[str, str, str, str]
    for_check_many: tuple[str, str, str, str, str]


def budget_copy(budget: Budget, version: int) -> tuple[Any, ...]:
    """budget_put's ARGV (quota/layouts.py): the copy's version, then its terms; the
    rate limits and feature caps as quota/ratelimits.py writes them."""
    b = budget
    return (
        version, int(b.enabled), b.soft_cap_tokens, b.hard_cap_tokens, b.period,
        spec(b.rate_limits), caps_spec(b.feature_caps),
    )  # fmt: skip


def _value_of(e: UsageEvent) -> str:
    """The stream entry's value of ``e`` (quota/entries.py)."""
    return event_value(
        e.event_id, e.port_id, e.user_id, e.feature, e.provider, e.model,
        e.input_tokens, e.output_tokens, e.request_id,
    )  # fmt: skip


class GateCore:
    """The state and the pure logic of a gate; the shells add the I/O."""

    def __init__(self, settings: Settings, load_outage_policies: Loader) -> None:
        self.settings = settings
        self.layout = KeyLayout(settings.key_prefix, settings.shards)
        self._library = library()
        self._outage = Outage(
            settings.outage_policy, settings.outage_allowance_tokens, load_outage_policies
        )
        self._in_outage = False
        self.breaker = self._new_breaker()
        self._journal = Journal(settings.journal_seconds, _JOURNAL_LIMIT)
        # One spool per key prefix: a deployment never replays another one's events.
        self._spool = Spool(settings.spool_dir / settings.key_prefix)
        self._spooled = self._spool.pending()  # a dead process's spool is replayed too
        self._fallback_log, self._spool_log = Every(_LOG_SECONDS), Every(_LOG_SECONDS)
        self._alert_log = Every(_LOG_SECONDS)
        self._epoch: str | None = None  # every epoch read last, joined: None until then
        self._epochs: dict[str, str] = {}
        self._hold_until = 0.0  # monotonic: until then ports are not rebuilt (a loss)
        self._lease_ms = int(settings.lease_seconds * 1000)
        # A reservation whose lease ended is remembered as long as a settled one.
        self._lapsed_ms = settings.settled_seconds * 1000
        self._replies = Replies()
        self._dedupe_window = timedelta(seconds=settings.idempotency_seconds)
        self._skew_ms = 0  # server clock minus ours, learnt from the scripts
        self._windows = Windows.at(datetime.now(UTC))
        self._recent = RecentReservations(_LOCAL_RESERVATIONS)
        self._port_keys: dict[str, PortKeys] = {}
        # Ports whose last decision showed rate limits or feature caps: their reserves
        # go as reserve_x, which reads that state with the budget copy (reserve.lua).
        self._extras: set[str] = set()
        self._period_cache: dict[str, _PeriodKeys] = {}

    def _check_shards(self, store: Store) -> None:
        """Refuse (`ShardMismatch`) to run with another shard count than the deployment's
        data: every port would be looked for in another shard. Postgres down: checked
        by the next process, or the workers, instead."""
        try:
            store.check_shards(self.settings.shards)
        except DatabaseUnavailable as exc:
            log.warning("shard count not checked against the deployment's (%s)", exc)

    def _new_breaker(self) -> Breaker:
        """A breaker of this gate's settings (a Cluster caller keeps one per primary)."""
        return Breaker(
            self.settings.breaker_failures,
            self.settings.breaker_reset_seconds,
            on_change=self._breaker,
        )

    # ------------------------------------------------------------------- epochs

    def _epoch_keys(self, owner: Callable[[str], str] | None) -> list[str]:
        """The epoch keys to watch: the one key of a single server; on a Cluster one per
        primary that owns a shard (``owner`` names a key's primary), since a primary can
        lose its data alone."""
        if owner is None:
            return [self.layout.epoch]
        first: dict[str, str] = {}
        for shard in range(self.settings.shards):
            key = self.layout.shard_epoch(shard)
            first.setdefault(owner(key), key)
        return sorted(first.values())

    def _epochs_seen(self, values: Mapping[str, str]) -> bool:
        """Keep the epochs just read; True if one seen before is gone or changed (its
        server lost its data). A key new to the list (a slot moved) is no loss."""
        seen = self._epochs
        lost = any(values[k] != v for k, v in seen.items() if k in values)
        self._epochs = dict(values)
        self._epoch = ",".join(values[k] for k in sorted(values))
        return lost

    # ------------------------------------------------------------- keys and clock

    def _port(self, port_id: object) -> PortKeys:
        """The keys of a caller's port id. One keyed here before was checked then (`_keys`
        only gets checked ids), so it is found by one lookup instead of a check and a
        lookup: 6-10 % of check_many's own work per port."""
        pk = self._port_keys.get(port_id) if type(port_id) is str else None
        return pk or self._keys(v.port_id(port_id))

    def _keys(self, port: str) -> PortKeys:
        """The keys of a checked port id."""
        pk = self._port_keys.get(port)
        if pk is None:
            if len(self._port_keys) > 100_000:
                self._port_keys.clear()  # a bound, not an LRU: rebuilding a PortKeys is cheap
            pk = self._port_keys[port] = self.layout.for_port(port)
        return pk

    def _period_keys(self, pk: PortKeys, w: Windows) -> _PeriodKeys:
        """The port's keys for the day of ``w``, built once per day."""
        cached = self._period_cache.get(pk.port)
        if cached is not None and cached.windows is w:
            return cached
        if len(self._period_cache) > 100_000:
            self._period_cache.clear()  # a bound, not an LRU: rebuilding is cheap
        leading = (pk.budget, *pk.usage_all(w))
        cached = self._period_cache[pk.port] = _PeriodKeys(w, leading, (*leading, pk.open))
        return cached

    def _now_ms(self) -> int:
        """Our clock, corrected by what the functions taught us of the server's."""
        return time.time_ns() // 1_000_000 + self._skew_ms

    def _now(self) -> datetime:
        return from_ms(self._now_ms())

    def _adopt_server_clock(self, server_ms: int) -> None:
        """A function said our clock disagrees with the server's about the day: from now
        on, name periods by the server's time."""
        self._skew_ms = server_ms - time.time_ns() // 1_000_000
        self._windows = Windows.at(from_ms(server_ms))

    def _now_windows(self) -> Windows:
        now_ms = self._now_ms()
        w = self._windows
        if not w.day_start_ms <= now_ms < w.day_end_ms:
            w = self._windows = Windows.at(from_ms(now_ms))
        return w

    # ---------------------------------------------------------------- the calls

    def _period_call(
        self, pk: PortKeys, keys: tuple[str, ...], args: tuple[Any, ...]
    ) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        """A period-keyed function's KEYS (the port hash, the usage keys of the period
        the client's clock names, then ``keys``) and ARGV (the day, then ``args``)."""
        w = self._now_windows()
        return (*self._period_keys(pk, w).leading, *keys), (w.day, *args)

    def _next(self, reply: str) -> Next:
        """What a period-keyed function's reply asks for; a clock correction is
        adopted here."""
        if reply.startswith(CLOCK):
            self._adopt_server_clock(int(reply[3:]))
            return "retry"
        return "budget" if reply == NO_BUDGET else "done"

    def _reserve_parts(
        self, pk: PortKeys, estimate: int, feature: str, user: str | None
    ) -> tuple[str, str, tuple[str, ...], tuple[Any, ...]]:
        """A reserve's new hex id, the function to call, and its keys and args after
        the period's (the feature only for reserve_x: a `NEEDS_FEATURE` reply asks for
        it)."""
        hex_id = new_hex_id(estimate, feature, user, pk.port)
        # Its open-set member, joined here: Lua's concat costs more.
        args = (estimate, self._lease_ms, f"{hex_id}:{estimate}", self._lapsed_ms)
        if pk.port in self._extras:
            return hex_id, "reserve_x", (pk.open, pk.lapsed), (*args, feature)
        return hex_id, "reserve", (pk.open, pk.lapsed), args

    def _learn(self, pk: PortKeys, reply: str) -> None:
        """Whether the port's next reserve goes as reserve_x, from its decision reply."""
        if has_extras(reply):
            if pk.port not in self._extras:
                if len(self._extras) > 100_000:
                    self._extras.clear()  # a bound: a port left out reads its state apart
                self._extras.add(pk.port)
        elif self._extras:
            self._extras.discard(pk.port)

    def _reserved(
        self, pk: PortKeys, reply: str, hex_id: str, estimate: int, feature: str, user: str | None
    ) -> Decision:
        """The decision of an admitting reserve's reply; the reservation is remembered."""
        ref = ReservationRef(hex_id, estimate, feature, user, pk.port)
        rid = reservation_id(*ref)
        self._recent.add(rid, ref)
        # The reply's reserved tokens leave this hold out (lib.lua formats no number).
        return self._replies.decision(reply, estimate, rid)

    def _usage_parts(
        self, pk: PortKeys, keys: tuple[str, ...], args: tuple[Any, ...], req: str | None
    ) -> tuple[tuple[str, ...], tuple[Any, ...], tuple[Any, ...]]:
        """Commit's or record's keys after the period's, and its args before and after
        the count-without-budget flag: with a request id, its marker's key and TTL (each
        FCALL argument costs Redis, so none without one)."""
        if req:
            return (*keys, pk.idempotency(req)), args, (self.settings.idempotency_seconds,)
        return keys, args, ()

    def _alert(self, port: str, used: int, terms: Terms) -> SoftCapAlert:
        """The soft-cap alert a usage reply raised."""
        start = period_start(terms.period, self._now())
        return SoftCapAlert(port, terms.period, start, used, terms.soft_cap)

    def _commit_event(
        self, ref: ReservationRef, provider: str, model: str, tin: int, tout: int, req: str | None
    ) -> UsageEvent:
        """A commit's usage as an event (for the paths past Redis): the reservation's
        event id, so that every path and every retry of the commit writes one event."""
        return UsageEvent(
            ref.event_id, ref.port, ref.user_id, ref.feature, provider, model, tin, tout, req,
            self._now(),
        )  # fmt: skip

    def _journal_event(self, e: UsageEvent) -> None:
        self._journal.add(
            (e.event_id, e.port_id, e.user_id, e.feature, e.provider, e.model,
             e.input_tokens, e.output_tokens, e.request_id, self._now_ms())
        )  # fmt: skip

    # ------------------------------------------------------ arguments and results

    def _budget_changes(
        self,
        port_id: str,
        updated_by: str,
        enabled: bool | None,
        soft_cap_tokens: int | None,
        hard_cap_tokens: int | None,
        period: Period | None,
        outage_policy: OutagePolicy | None,
        rate_limits: Sequence[RateLimit] | None = None,
        feature_caps: Mapping[str, int] | None = None,
    ) -> tuple[str, str, dict[str, object]]:
        """set_budget's port, author and changes, checked before any I/O (type, range
        and enum errors raise `InvalidBudget`). Rate limits and feature caps replace
        the stored ones when given (``[]`` and ``{}`` remove them)."""
        changes: dict[str, object] = {
            "enabled": enabled,
            "soft_cap_tokens": soft_cap_tokens,
            "hard_cap_tokens": hard_cap_tokens,
            "period": period,
            "outage_policy": outage_policy,
            "rate_limits": None if rate_limits is None else tuple(rate_limits),
            "feature_caps": None if feature_caps is None else dict(feature_caps),
        }
        Budget.check_fields(changes)
        return v.port_id(port_id), v.label("updated_by", updated_by), changes

    def _status(self, pk: PortKeys, reply: str) -> Status:
        """A status from a check's reply (estimate 0)."""
        used, reserved, _, (enabled, soft, hard, period) = self._replies.standing(reply)
        budget = Budget(enabled=enabled, soft_cap_tokens=soft, hard_cap_tokens=hard, period=period)
        now = self._now()
        return Status(
            port_id=pk.port,
            enabled=budget.enabled,
            period=budget.period,
            used_tokens=used,
            reserved_tokens=reserved,
            soft_cap_tokens=soft,
            hard_cap_tokens=hard,
            period_start=period_start(budget.period, now),
            resets_at=period_end(budget.period, now),
            state=state_of(budget, used),
        )

    def _rebuild_window(self) -> tuple[Windows, date]:
        """The windows a rebuild fills, and the first day of ledger usage it needs."""
        w = self._now_windows()
        return w, from_ms(min(w.week_start_ms, w.month_start_ms)).date()

    @staticmethod
    def _rebuild_parts(
        pk: PortKeys, w: Windows, rows: Iterable[tuple[str, str, date, int]]
    ) -> tuple[list[str], list[Any]]:
        """The rebuild function's KEYS and ARGV: the port's counters at the ledger's sums."""
        return counter_writes(fold_days(rows, w), w, lambda _, period, pid: pk.usage(period, pid))

    @staticmethod
    def _days(start: date, end: date) -> None:
        if not isinstance(start, date) or not isinstance(end, date) or start > end:
            raise InvalidInput(f"need two dates with start <= end, got {start!r} and {end!r}")

    def _release_call(
        self, reservation_id: str
    ) -> tuple[ReservationRef, tuple[str, ...], tuple[Any, ...]]:
        ref = parse_reservation_id(reservation_id)
        pk = self._keys(ref.port)
        keys = (pk.budget, pk.open, pk.lapsed, pk.settled(ref.hex_id))
        return ref, keys, (ref.member, self.settings.settled_seconds, ref.feature)

    def _released(self, reservation_id: str, code: str) -> bool:
        """What release's reply means: released now, already settled, or unknown."""
        if code == UNKNOWN:
            raise UnknownReservation(f"unknown reservation {reservation_id!r}")
        self._recent.pop(reservation_id)
        metrics.OUTCOMES["release", "released" if code == OK else "noop"].inc()
        return code == OK

    def _commit_parts(
        self, pk: PortKeys, ref: ReservationRef, total: int, values: str
    ) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        """Commit's keys and args after the period's (before the request id's)."""
        keys = (pk.stream, pk.open, pk.lapsed, pk.settled(ref.hex_id))
        return keys, (ref.member, total, ref.feature, values, self.settings.settled_seconds)

    # ---------------------------------------------------------------- check_many

    def _many(
        self, requests: Iterable[tuple[str, int]]
    ) -> tuple[list[tuple[PortKeys, int]], list[Decision | None], dict[int, list[int]]]:
        """check_many's checked items, its empty results, and its items by shard."""
        items = [(self._port(p), v.tokens("estimated_tokens", e)) for p, e in requests]
        pending: dict[int, list[int]] = {}
        for i, (pk, _) in enumerate(items):
            pending.setdefault(pk.shard, []).append(i)
        return items, [None] * len(items), pending

    def _many_degraded(
        self, items: list[tuple[PortKeys, int]], results: list[Decision | None], exc: Exception
    ) -> list[Decision]:
        """Every port still undecided, by its outage policy."""
        for i, decided in enumerate(results):
            if decided is None:
                pk, estimate = items[i]
                results[i] = metrics.count_decision("check", self._degraded(pk.port, estimate, exc))
        return cast(list[Decision], results)

    # ------------------------------------------------------------ outage policy

    def _degraded(
        self,
        port: str,
        estimate: int,
        cause: BaseException,
        *,
        feature: str | None = None,
        user: str | None = None,
    ) -> Decision:
        """The decision of the port's outage policy; a reserve's (``feature`` given) gets
        a reservation id that commit settles through the fallback."""
        ok, policy = self._outage.admit(port, estimate)
        log.debug("Redis unavailable (%s): %s decides for %s", cause, policy, port)
        rid = None
        if ok and feature is not None:
            hex_id = new_hex_id(estimate, feature, user, port, degraded=True)
            rid = reservation_id(hex_id, estimate, feature, user, port)
            self._recent.add(rid, ReservationRef(hex_id, estimate, feature, user, port, True))
        reason: Reason | None = None if ok else "unavailable"
        return Decision(ok, reason, 0, None, 0, False, 0, False, "month", rid, True)

    def _breaker(self, state: State) -> None:
        metrics.BREAKER_STATE.set({"closed": 0, "half-open": 1, "open": 2}[state])
        if state == "open" and not self._in_outage:
            # Once per outage, not at every failed probe.
            self._in_outage = True
            log.error("Redis circuit open: decisions follow the outage policy")
        elif state == "closed":
            self._in_outage = False
            self._outage.ended()
            log.warning("Redis answers again: circuit closed")


class ManyRound:
    """One round trip of check_many, without I/O: the calls to send (one per shard, built
    as they are sent), then each reply handled as it arrives. Fills ``results``; leaves
    in ``retry`` what must go again (ports whose budget copy was missing, in
    ``missing``, or a clock correction)."""

    def __init__(
        self,
        core: GateCore,
        items: list[tuple[PortKeys, int]],
        pending: dict[int, list[int]],
        results: list[Decision | None],
    ) -> None:
        self.core, self.items, self.results = core, items, results
        self.w = core._now_windows()
        self.order = list(pending.items())
        self.retry: dict[int, list[int]] = {}
        self.missing: list[int] = []  # ports whose budget copy is not in Redis
        self.outcomes: dict[str, int] = {}

    def calls(self) -> Iterator[tuple[list[str], tuple[Any, ...]]]:
        w, items, period_keys = self.w, self.items, self.core._period_keys
        for _, idxs in self.order:  # built one shard at a time, while Redis runs the last
            keys: list[str] = []
            for i in idxs:
                keys += period_keys(items[i][0], w).for_check_many
            yield keys, (w.day, *(items[i][1] for i in idxs))

    def handle(self, n: int, reply: list[str] | str) -> None:
        shard, idxs = self.order[n]
        if isinstance(reply, str):  # "-2|<ms>", the only reply that is not a list
            self.core._adopt_server_clock(int(reply[3:]))
            self.retry[shard] = idxs
            return
        parse, results, outcomes = self.core._replies.decision, self.results, self.outcomes
        for i, one in zip(idxs, reply, strict=True):
            if one == NO_BUDGET:
                self.retry.setdefault(shard, []).append(i)
                self.missing.append(i)
            else:
                decision = parse(one)
                results[i] = decision
                outcome: str = decision.reason or "ok"
                outcomes[outcome] = outcomes.get(outcome, 0) + 1

    def counted(self) -> None:
        for outcome, n in self.outcomes.items():  # one increment per outcome, not per port
            metrics.OUTCOMES["check", outcome].inc(n)

    def unloaded(self, i: int, exc: Exception) -> None:
        """Port ``i``'s budget copy could not be loaded: decided by its policy."""
        pk, estimate = self.items[i]
        self.results[i] = metrics.count_decision(
            "check", self.core._degraded(pk.port, estimate, exc)
        )
        self.retry[pk.shard].remove(i)
