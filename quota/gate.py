"""The gate: the library every worker process calls before and after each LLM call.

Every decision and every usage report is one FCALL of one Lua function (see
quota/lua/ and quota/scripts.py). Postgres is touched only on a budget-cache miss, on
set_budget, on a soft-cap alert (once per port per period) and on the fallback path
when Redis is down.

When Redis cannot be asked (down, hung, at its limit, or the breaker open after
repeated failures), decisions follow the port's outage policy (quota/outage.py) and
usage goes to Postgres, else to a local spool; neither raises. What the fallback
wrote is owed to Redis (holds to release, usage to count) and paid on the first call
that reaches Redis again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Any, cast

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from quota import metrics
from quota import validation as v
from quota._backend import redis_errors
from quota._calls import ScriptCaller, Unreplicated
from quota._cluster import ClusterCaller
from quota._exceptions import (
    BackendError,
    BudgetExceeded,
    DatabaseUnavailable,
    RedisUnavailable,
    ShardMismatch,
    UnknownReservation,
)
from quota._slots import SlotMap
from quota.canned import CannedTransport
from quota.core import (
    ATTEMPTS,
    EPOCH_SECONDS,
    HOLD_MS,
    GateCore,
    ManyRound,
    SoftCapCallback,
    _value_of,
    budget_copy,
)
from quota.durability import redis_risks
from quota.entries import event_value
from quota.fallback import Fallback, Owed
from quota.ids import uuid7
from quota.keys import PortKeys
from quota.models import (
    Budget,
    BudgetChange,
    DailyUsage,
    Decision,
    FeatureUsage,
    RateLimit,
    SoftCapAlert,
    Status,
    UsageEvent,
    UsageResult,
)
from quota.outage_wait import OutageWait
from quota.periods import Period, period_start
from quota.replies import CLOCK, NEEDS_FEATURE, NO_BUDGET, OK, UNKNOWN
from quota.reservations import (
    parse_reservation_id,
)
from quota.settings import OutagePolicy, Settings
from quota.store import Store, make_engine
from quota.topology import Client, is_cluster, parse_cluster_url, primaries, sync_client

log = logging.getLogger("quota")

_REPLAY_JOIN_SECONDS = 30.0


class Gate(GateCore, Fallback):
    """Per-port token budgets, enforced atomically in Redis. Thread-safe; make one per process."""

    def __init__(
        self,
        settings: Settings,
        *,
        on_soft_cap: SoftCapCallback | None = None,
        transport: CannedTransport | None = None,
        report_risks: bool = True,
    ) -> None:
        """``transport`` replaces the connection to Redis for the hot path's calls: a
        `quota.canned.CannedTransport` in tests and the client-cost benchmark.
        ``report_risks``: log at start what `quota health` would say of Redis's settings
        (the CLI's one-shot commands leave it to `quota health`)."""
        self.on_soft_cap = on_soft_cap
        self._report_risks = report_risks
        # Retry only connection errors: a timed-out script may have run, and running
        # a non-idempotent record twice would count it twice. (The hot path goes through
        # ScriptCaller, which keeps the same rule; this client serves the rest.)
        self._redis_kwargs: dict[str, Any] = {
            "socket_timeout": settings.redis_timeout,
            "socket_connect_timeout": settings.redis_timeout,
            "retry": Retry(
                ExponentialBackoff(cap=0.2, base=0.01),
                2,
                supported_errors=(redis.exceptions.ConnectionError,),
            ),
            "decode_responses": True,
        }
        self._redis: Client | None = None
        self._redis_lock = threading.Lock()
        self.store = Store(
            make_engine(settings.database_url, settings.database_timeout), settings.key_prefix
        )
        GateCore.__init__(self, settings, self.store.outage_policies)
        try:
            self._check_shards(self.store)
        except ShardMismatch:
            self.store.engine.dispose()
            raise
        self._call: ScriptCaller | ClusterCaller | CannedTransport
        if transport is not None:
            self._call = transport
        elif is_cluster(settings.redis_url):
            slots = SlotMap(parse_cluster_url(settings.redis_url), settings.redis_timeout)
            self._call = ClusterCaller(
                slots,
                self._library,
                lambda name: redis.Redis.from_url(slots.node_url(name), **self._redis_kwargs),
                self._new_breaker,
            )
        else:
            self._call = ScriptCaller(cast(redis.Redis, self.redis), self._library, self.breaker)
        self._call.on_missing = self._library_missing
        self._call.on_failover = self._failed_over
        if settings.replica_ack and not isinstance(self._call, CannedTransport):
            self._call.replica_ack(settings.replica_ack)
        self._init_fallback()
        self._owed_lock = threading.Lock()
        self._closed = threading.Event()
        self._replays: list[threading.Thread] = []  # journal replays, joined by close()
        # Last: these threads use the gate.
        threading.Thread(target=self._watch, name="quota-watch", daemon=True).start()
        self._outage.refresh()  # the budgets' own outage policies, ready before an outage
        if self._spooled:  # a spool a process left: replayed now, not at its first call
            self._replay_spool()

    @property
    def redis(self) -> Client:
        """redis-py's client of this gate's Redis, for what is not the hot path: a
        `RedisCluster` on a Cluster, made on first use (it reads the slot map, so a gate
        can be made while every node is down)."""
        client = self._redis
        if client is None:
            with self._redis_lock:
                client = self._redis
                if client is None:
                    try:
                        client = self._redis = sync_client(
                            self.settings.redis_url, **self._redis_kwargs
                        )
                    except RedisClusterException as exc:
                        raise redis.exceptions.ConnectionError(str(exc)) from exc
        return client

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        on_soft_cap: SoftCapCallback | None = None,
        **overrides: Any,
    ) -> Gate:
        """A gate configured from ``QUOTA_*`` variables, with keyword ``overrides``."""
        base = settings or Settings()
        if overrides:
            base = base.model_copy(update=overrides)
        return cls(base, on_soft_cap=on_soft_cap)

    def close(self) -> None:
        self._closed.set()
        for replay in self._replays:  # usage only the journal has: not dropped at exit
            replay.join(_REPLAY_JOIN_SECONDS)
        self._call.close()
        if self._redis is not None:
            self._redis.close()
        self.store.engine.dispose()

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ budgets

    def get_budget(self, port_id: str) -> Budget:
        """The port's budget from Postgres (the truth); the default if none is stored."""
        return self.store.load_budget(v.port_id(port_id))[0]

    def set_budget(
        self,
        port_id: str,
        *,
        updated_by: str,
        enabled: bool | None = None,
        soft_cap_tokens: int | None = None,
        hard_cap_tokens: int | None = None,
        period: Period | None = None,
        outage_policy: OutagePolicy | None = None,
        rate_limits: Sequence[RateLimit] | None = None,
        feature_caps: Mapping[str, int] | None = None,
    ) -> Budget:
        """Merge a partial update into the port's budget; validate; store; refresh the cache.

        Raises `InvalidBudget` (nothing written) on bad input.
        """
        port, who, changes = self._budget_changes(
            port_id, updated_by, enabled, soft_cap_tokens, hard_cap_tokens, period, outage_policy,
            rate_limits, feature_caps,
        )  # fmt: skip
        budget, version = self.store.save_budget(port, changes, who)
        self._outage.note(port, budget.outage_policy)
        try:
            self._check_hold()  # a loss's hold: no rebuild yet (_load_budget checks its own)
            self._refill(self._keys(port), budget, version)
        except BackendError:
            # Postgres has the truth; reconciliation refreshes every budget copy from it.
            log.warning(
                "budget of %s saved in Postgres; its Redis copy is stale until the "
                "next reconcile or set_budget",
                port,
            )
        return budget

    def budget_history(self, port_id: str) -> list[BudgetChange]:
        return self.store.budget_history(v.port_id(port_id))

    def _cache_budget(self, pk: PortKeys, budget: Budget, version: int) -> None:
        with redis_errors():
            self._call("budget_put", (pk.budget,), budget_copy(budget, version))

    def _load_budget(self, pk: PortKeys) -> None:
        """The port's budget copy is missing: Redis never had the port, or lost it."""
        self._check_hold()  # before Postgres is asked: a held port is decided at once
        budget, version = self.store.load_budget(pk.port)
        self._refill(pk, budget, version)

    def _refill(self, pk: PortKeys, budget: Budget, version: int) -> None:
        """Raise the port's counters to the ledger's sums (never lower them), then write
        its budget copy: until the copy exists no call counts or decides for the port,
        so a port Redis lost is rebuilt before it is decided."""
        w, since = self._rebuild_window()
        keys, args = self._rebuild_parts(pk, w, self.store.usage_by_day(pk.port, since))
        if keys:
            with redis_errors():
                raised = self._call("rebuild", keys, args)
            if raised:
                log.warning(
                    "port %s was missing from Redis: counters rebuilt from the ledger", pk.port
                )
        self._cache_budget(pk, budget, version)

    def _check_hold(self) -> None:
        """Raise `RedisUnavailable` while a loss's hold lasts: the ledger may still lack
        usage that only another gate's journal has, and a port rebuilt from it now would
        spend that usage again. The callers decide by the outage policy meanwhile."""
        now = time.monotonic()
        if now >= self._hold_until:
            with redis_errors():
                ms = int(self.redis.pttl(self.layout.recovering))
            if ms <= 0:  # -2: no hold
                return
            self._hold_until = now + ms / 1000
        raise RedisUnavailable(
            "Redis lost its data: ports are rebuilt once every gate has replayed its journal"
        )

    def _keep_hold(self, ms: int) -> None:
        self._hold(ms, start=False)

    def _hold(self, ms: int, *, start: bool) -> None:
        """Start the hold of a loss (if no gate has) or keep it alive ``ms`` more."""
        key = self.layout.recovering
        try:
            if start:
                self.redis.set(key, "1", nx=True, px=ms)
            self.redis.pexpire(key, ms, gt=True)
        except redis.exceptions.RedisError as exc:  # gone again: an outage, by policy
            log.warning("Redis lost its data, and the hold of its ports failed: %s", exc)

    # ---------------------------------------------------------------- decisions

    def check(self, port_id: str, estimated_tokens: int) -> Decision:
        """The seed's decision for spending ``estimated_tokens``; changes nothing."""
        pk = self._port(port_id)
        estimate = v.tokens("estimated_tokens", estimated_tokens)
        try:
            reply = self._check(pk, estimate, "")
        except BackendError as exc:
            return metrics.count_decision("check", self._degraded(pk.port, estimate, exc))
        return metrics.count_decision("check", self._replies.decision(reply))

    def check_many(self, requests: Iterable[tuple[str, int]]) -> list[Decision]:
        """`check` for many ``(port_id, estimated_tokens)`` pairs, in their order.

        One script per shard, each sent as soon as it is built and its reply parsed as
        it arrives: a single round trip, with the client working while Redis does.
        """
        items, results, pending = self._many(requests)
        try:
            for _ in range(ATTEMPTS):
                if not pending:
                    break
                pending = self._check_many_round(items, pending, results)
            if pending:
                raise RedisUnavailable(f"check_many did not settle after {ATTEMPTS} attempts")
        except BackendError as exc:
            return self._many_degraded(items, results, exc)
        return cast(list[Decision], results)

    def _check_many_round(
        self,
        items: list[tuple[PortKeys, int]],
        pending: dict[int, list[int]],
        results: list[Decision | None],
    ) -> dict[int, list[int]]:
        """One round trip: each shard's call sent as soon as it is built, its reply
        handled as it arrives, so the client works while Redis does."""
        rnd = ManyRound(self, items, pending, results)
        started = time.perf_counter()
        with redis_errors():
            self._call.call_each("check_many", rnd.calls, rnd.handle)
        metrics.TIMERS["check"].observe(time.perf_counter() - started)
        rnd.counted()
        for i in rnd.missing:
            try:
                self._load_budget(items[i][0])
            except BackendError as exc:  # Postgres down: this port by its policy
                rnd.unloaded(i, exc)
        return rnd.retry

    def reserve(
        self, port_id: str, estimated_tokens: int, feature: str, user_id: str | None = None
    ) -> Decision:
        """Decide, counting open reservations, and on success hold the tokens under a lease.

        The decision's ``reservation_id`` is then set; settle it with `commit` or
        `release`, or let the lease (``QUOTA_LEASE_SECONDS``) return it.
        """
        pk = self._port(port_id)
        estimate = v.tokens("estimated_tokens", estimated_tokens)
        feat, user = v.feature(feature), v.user_id(user_id)
        hex_id, op, keys, args = self._reserve_parts(pk, estimate, feat, user)
        try:
            reply = self._run(op, pk, keys, args)
            if reply == NEEDS_FEATURE:  # a port with feature caps, new to this gate
                reply = self._run("reserve_x", pk, keys, (*args, feat))
        except BackendError as exc:
            decision = self._degraded(pk.port, estimate, exc, feature=feat, user=user)
            return metrics.count_decision("reserve", decision)
        self._learn(pk, reply)
        if not reply.startswith(OK):
            return metrics.count_decision("reserve", self._replies.decision(reply))
        decision = self._reserved(pk, reply, hex_id, estimate, feat, user)
        return metrics.count_decision("reserve", decision)

    def release(self, reservation_id: str) -> bool:
        """Return a reservation's hold. True if released now, False if already settled."""
        ref, keys, args = self._release_call(reservation_id)
        if ref.degraded:
            return self._recent.pop(reservation_id) is not None  # nothing held in Redis
        started = time.perf_counter()
        with redis_errors():
            code: str = self._call("release", keys, args)
        metrics.TIMERS["release"].observe(time.perf_counter() - started)
        return self._released(reservation_id, code)

    @contextmanager
    def reservation(
        self, port_id: str, estimated_tokens: int, feature: str, user_id: str | None = None
    ) -> Iterator[Reservation]:
        """``with gate.reservation(...) as r: ...; r.commit(...)``.

        Raises `BudgetExceeded` if refused; releases the hold if the block raises or
        ends without committing.
        """
        decision = self.reserve(port_id, estimated_tokens, feature, user_id)
        if not decision.ok or decision.reservation_id is None:
            raise BudgetExceeded(decision)
        held = Reservation(self, decision)
        try:
            yield held
        finally:
            if held.result is None:
                self.release(decision.reservation_id)

    # -------------------------------------------------------------------- usage

    def commit(
        self,
        reservation_id: str,
        *,
        input_tokens: int,
        output_tokens: int,
        provider: str,
        model: str,
        request_id: str | None = None,
    ) -> UsageResult:
        """Settle a reservation with the actual usage (counted in full) in one step.

        Idempotent: a second commit (or a commit after release) is a no-op with
        ``duplicate=True``. Like `record`, it never raises for a backend failure; a
        reservation this process made that Redis has lost is counted as a `record`.
        """
        tin, tout = v.tokens("input_tokens", input_tokens), v.tokens("output_tokens", output_tokens)
        prov, mod = v.label("provider", provider), v.label("model", model)
        req = v.request_id(request_id)
        # Made here: its parts were kept (no parsing). Else parsed, and checked, from the id.
        mine = self._recent.pop(reservation_id) if isinstance(reservation_id, str) else None
        ref = mine or parse_reservation_id(reservation_id)
        port, feature, user = ref.port, ref.feature, ref.user_id
        pk = self._keys(port)
        # The reservation's: every path and every retry of this commit writes one event.
        event_id = ref.event_id
        if ref.degraded:  # reserved during an outage: Redis holds nothing to settle
            event = self._commit_event(ref, prov, mod, tin, tout, req)
            return metrics.count_usage("commit", self._record(pk, event))
        values = event_value(event_id, port, user, feature, prov, mod, tin, tout, req)

        try:
            keys, args = self._commit_parts(pk, ref, tin + tout, values)
            reply = self._usage_reply("commit", pk, keys, args, req)
        except Unreplicated as exc:
            reply = exc.reply
            self._durable(self._commit_event(ref, prov, mod, tin, tout, req))
        except RedisUnavailable as exc:
            event = self._commit_event(ref, prov, mod, tin, tout, req)
            return metrics.count_usage("commit", self._fallback(event, exc, ref))
        if reply == UNKNOWN:
            if mine is None:
                raise UnknownReservation(f"unknown reservation {reservation_id!r}")
            # This process made it, so Redis lost it (a restart without persistence, a
            # flush) or forgot it long after its lease: the call happened, count it.
            log.warning(
                "reservation %s unknown to Redis; its usage is recorded without it", reservation_id
            )
            event = self._commit_event(ref, prov, mod, tin, tout, req)
            return metrics.count_usage("commit", self._record(pk, event))
        result = self._usage_result(pk, reply, tin + tout, event_id)
        if not result.duplicate:
            ms = self._now_ms()
            self._journal.add((event_id, port, user, feature, prov, mod, tin, tout, req, ms))
        return metrics.count_usage("commit", result)

    def record(
        self,
        *,
        port_id: str,
        feature: str,
        provider: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        user_id: str | None = None,
        request_id: str | None = None,
    ) -> UsageResult:
        """Count usage that had no reservation, and ledger it. Idempotent by request_id.

        Raises `InvalidInput` for bad arguments, never for a backend failure: when
        Redis is down the event goes straight to Postgres; when both are down it is
        logged at ERROR in full and the result says ``stored=False``.
        """
        pk = self._port(port_id)
        feat, user = v.feature(feature), v.user_id(user_id)
        prov, mod = v.label("provider", provider), v.label("model", model)
        tin, tout = v.tokens("input_tokens", input_tokens), v.tokens("output_tokens", output_tokens)
        req = v.request_id(request_id)
        # Fixed before the first attempt: a call that timed out but ran in Redis and its
        # fallback row are one event to the ledger.
        event = UsageEvent(uuid7(), pk.port, user, feat, prov, mod, tin, tout, req, self._now())
        return metrics.count_usage("record", self._record(pk, event))

    def _record(self, pk: PortKeys, e: UsageEvent) -> UsageResult:
        """Count ``e`` in Redis and append it to its stream, else fall back."""
        total = e.input_tokens + e.output_tokens
        values = _value_of(e)
        try:
            reply = self._usage_reply(
                "record", pk, (pk.stream,), (e.feature, total, values), e.request_id
            )
        except Unreplicated as exc:
            reply = exc.reply
            self._durable(e)
        except RedisUnavailable as exc:
            return self._fallback(e, exc)
        result = self._usage_result(pk, reply, total, e.event_id)
        if not result.duplicate:
            self._journal_event(e)
        return result

    # ------------------------------------------------------------------- status

    def current_period_tokens(self, port_id: str, feature: str | None = None) -> int:
        """Tokens used in the port's current budget period (O(1), from Redis)."""
        feat = "" if feature is None else v.feature(feature)
        st = self._replies.standing(self._check(self._port(port_id), 0, feat))
        return st.used if st.feature_used is None else st.feature_used

    def status(self, port_id: str) -> Status:
        """Usage against the caps in the port's current period: what a banner needs."""
        pk = self._port(port_id)
        return self._status(pk, self._check(pk, 0, ""))

    def breakdown(self, port_id: str) -> list[FeatureUsage]:
        """Per-feature tokens and calls in the port's current period, from Postgres.

        Durable (the ledger), so it lags the gate by the drain's few seconds.
        """
        port = v.port_id(port_id)
        budget = self.get_budget(port)
        since = period_start(budget.period, datetime.now(UTC)).date()
        return self.store.breakdown(port, since)

    def daily_usage(self, port_id: str, start: date, end: date) -> list[DailyUsage]:
        """Per-day, per-feature tokens and calls for ``start`` ≤ day ≤ ``end`` (UTC days)."""
        self._days(start, end)
        return self.store.daily(v.port_id(port_id), start, end)

    def alerts(self, port_id: str) -> list[SoftCapAlert]:
        """The soft-cap alerts stored for the port, oldest first."""
        return self.store.alerts(v.port_id(port_id))

    def _run(
        self,
        op: str,
        pk: PortKeys,
        keys: tuple[str, ...],
        args: tuple[Any, ...],
        *,
        load_budget: bool = True,
    ) -> str:
        """Run a period-keyed function: KEYS are the port hash, the usage keys of the
        period the client's clock names, then ``keys``; ARGV the day, then ``args``.
        Loads the budget copy or fixes the clock as asked. Returns its reply, which may
        be `NO_BUDGET` only if not ``load_budget``."""
        timer = metrics.TIMERS[op]
        for _ in range(ATTEMPTS):
            w = self._now_windows()
            call_keys, call_args = (*self._period_keys(pk, w).leading, *keys), (w.day, *args)
            started = time.perf_counter()
            try:  # inline rather than redis_errors(): this is the hot path
                reply: str = self._call(op, call_keys, call_args)
            except Unreplicated:
                raise  # counted, and healthy: the caller keeps the event (_durable)
            except redis.exceptions.RedisError as exc:
                reply = self._wait_out(exc, op, call_keys, call_args)
            timer.observe(time.perf_counter() - started)
            if self._owed:
                self._pay_owed()
            if reply.startswith(CLOCK):
                self._adopt_server_clock(int(reply[3:]))
            elif reply == NO_BUDGET and load_budget:
                self._load_budget(pk)
            else:
                return reply
        raise RedisUnavailable(f"script did not settle after {ATTEMPTS} attempts")

    def _wait_out(
        self,
        exc: Exception,
        op: str,
        keys: tuple[Any, ...],
        args: tuple[Any, ...],
    ) -> str:
        """The call failed: try it again until Redis answers, for up to
        QUOTA_OUTAGE_WAIT_SECONDS (0: not at all), else raise `RedisUnavailable`."""
        wait = OutageWait(self.settings.outage_wait_seconds)
        while (pause := wait.pause(exc)) is not None:
            time.sleep(pause)
            try:
                reply: str = self._call(op, keys, args)
                return reply
            except Unreplicated:
                raise
            except redis.exceptions.RedisError as again:
                exc = again
        raise RedisUnavailable(f"Redis failed: {exc}") from exc

    def _check(self, pk: PortKeys, estimate: int, feature: str) -> str:
        return self._run("check", pk, (pk.open,), (estimate, feature))

    def _usage_reply(
        self, op: str, pk: PortKeys, keys: tuple[str, ...], args: tuple[Any, ...], req: str | None
    ) -> str:
        """Run commit or record: KEYS end with ``keys`` and, with a request id, its
        marker; ARGV with ``args``, the count-without-budget flag and, with a request id,
        the marker's TTL (each FCALL argument costs Redis, so none without one). If the
        budget cannot be loaded, count without it."""
        keys, args, ttl = self._usage_parts(pk, keys, args, req)
        try:
            reply = self._run(op, pk, keys, (*args, "0", *ttl))
        except DatabaseUnavailable:
            reply = NO_BUDGET
        if reply == NO_BUDGET:
            log.warning("budget copy missing and Postgres down: counting without a budget")
            reply = self._run(op, pk, keys, (*args, "1", *ttl), load_budget=False)
        return reply

    def _usage_result(self, pk: PortKeys, reply: str, total: int, event_id: str) -> UsageResult:
        if self._spooled:
            self._replay_spool()
        result, alert = self._replies.usage(reply, total, event_id)
        if alert is not None and result.used_tokens is not None:
            self._store_alert(self._alert(pk.port, result.used_tokens, alert))
        return result

    # ------------------------------------------------------------------ outages

    def _watch(self) -> None:
        """Off the callers' threads: say at start what `quota health` would (a setting
        that lets ports overspend is an error, one that can lose usage a warning), then
        look every second whether Redis lost its data (`_check_epoch`)."""
        try:
            for node in primaries(self.redis) if self._report_risks else ():
                failures, warnings = redis_risks(node.info())
                for text in failures:
                    log.error("Redis: %s", text)
                for text in warnings:
                    log.warning("Redis: %s", text)
        except redis.exceptions.RedisError:
            pass  # down: the breaker and the outage policy take it from here
        while not self._closed.wait(EPOCH_SECONDS):
            try:
                self._check_epoch()
            except (redis.exceptions.RedisError, BackendError):
                continue  # Redis or Postgres down: look again in a second

    def _check_epoch(self) -> None:
        """The epoch key is gone or another value: Redis lost its data since we last
        looked (a restart without persistence, a flush), so replay the journal. The
        function library's absence says the same sooner, but only to the first process
        that calls after the loss: the others learn it here, within a second."""
        owner = self._call.owner if isinstance(self._call, ClusterCaller) else None
        values = {}
        for key in self._epoch_keys(owner):
            if self.redis.get(key) is None:
                self.redis.set(key, f"{random.getrandbits(64):016x}", nx=True)
            values[key] = str(self.redis.get(key))
        if self._epochs_seen(values):
            self._redis_lost()

    def _library_missing(self) -> None:
        """A server lacks the function library: it lost its data, or only the library
        (FUNCTION FLUSH). The epoch keys we saw last still there say the latter. They
        are only read here: the watch thread writes a new epoch, and calls
        `_redis_lost` again when it sees it, which keeps the loss's hold a while
        longer."""
        try:
            owner = self._call.owner if isinstance(self._call, ClusterCaller) else None
            keys = self._epoch_keys(owner) if self._epochs else []
            same = bool(keys) and all(
                self.redis.get(key) == self._epochs.get(key, "") for key in keys
            )
        except redis.exceptions.RedisError:
            same = False
        if not same:
            self._redis_lost()

    def _redis_lost(self) -> None:
        """Redis lost its data (a restart without persistence, a flush), and with it the
        usage it had not handed to the drain yet. Hold its ports (`_check_hold`): every
        gate learns of the loss within a second (the epoch) and writes what it counted
        lately to the ledger, on a thread of its own, keeping the hold alive while it
        does; only then are ports rebuilt from the ledger. Callers do not wait: held
        ports are decided by the outage policy."""
        events = self._journal.take()
        if events or self._epoch is not None:  # a loss, not a first deployment
            self._hold(HOLD_MS, start=True)
        if events:
            self._start_replay(events)

    def _pay_owed(self) -> None:
        """Redis answers again: settle there the commits the fallback stored. One thread
        pays; the others go on."""
        if not self._owed_lock.acquire(blocking=False):
            return
        try:
            while self._owed:
                owed = self._owed.popleft()
                try:
                    self._pay(owed)
                except BackendError:
                    self._owed.appendleft(owed)  # Redis went again: later
                    return
        finally:
            self._owed_lock.release()

    def _pay(self, owed: Owed) -> None:
        """Settle the reservation in Redis with its usage, in one step: releasing the hold
        alone would let the port spend again before reconciliation counts the usage, which
        it then does again for this port (its direct row is marked not reconciled).
        Redis answers no-op if the commit had run there after all (its call timed out),
        and 'unknown' if Redis lost the reservation (a rebuild then counted the usage).
        Its stream entry is dropped by the drain, as the ledger has the event."""
        e, ref = owed.event, owed.ref
        pk = self._keys(e.port_id)
        # First: reconciliation may have counted the direct row already, and counts it
        # again after this step, so that the counters hold it once either way.
        self.store.unreconciled(e.event_id)
        values = _value_of(e)
        total = e.input_tokens + e.output_tokens
        keys, args = self._commit_parts(pk, ref, total, values)
        with contextlib.suppress(Unreplicated):  # the ledger has the event already
            self._usage_reply("commit", pk, keys, args, e.request_id)


@dataclasses.dataclass
class Reservation:
    """A held reservation inside `Gate.reservation`; call `commit` once the call is done."""

    gate: Gate
    decision: Decision
    result: UsageResult | None = None

    @property
    def reservation_id(self) -> str:
        assert self.decision.reservation_id is not None  # set for every ok reserve
        return self.decision.reservation_id

    def commit(
        self,
        *,
        input_tokens: int,
        output_tokens: int,
        provider: str,
        model: str,
        request_id: str | None = None,
    ) -> UsageResult:
        self.result = self.gate.commit(
            self.reservation_id,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            provider=provider,
            model=model,
            request_id=request_id,
        )
        return self.result
