"""`AsyncGate`: the gate for asyncio services, a shell over the same core as `Gate`.

Same arguments, return types, errors, outage policy and breaker as `Gate`. Redis is
asked over one pipelined connection per gate (quota/_acalls.py): the calls of
concurrent tasks go out in one write. Postgres, which the gate touches only off the
hot path (a budget-copy miss, budgets, reports, the fallback), is asked in a worker
thread with the same statements as `Gate`'s. One `AsyncGate` per event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from typing import Any, cast

import redis
import redis.asyncio

from quota import metrics, process
from quota import validation as v
from quota._acalls import AsyncScriptCaller
from quota._acluster import AsyncClusterCaller
from quota._calls import Unreplicated
from quota._exceptions import (
    BackendError,
    BudgetExceeded,
    DatabaseUnavailable,
    RedisUnavailable,
    ShardMismatch,
    UnknownReservation,
    WrongEventLoop,
)
from quota._slots import SlotMap
from quota.async_store import AsyncStore, make_async_engine
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
from quota.replies import NEEDS_FEATURE, NO_BUDGET, OK, UNKNOWN
from quota.reservations import parse_reservation_id
from quota.settings import OutagePolicy, Settings
from quota.store import Store, make_engine
from quota.topology import async_client, parse_cluster_url

log = logging.getLogger("quota")


class AsyncGate(GateCore, Fallback):
    """Per-port token budgets for asyncio: `Gate`'s methods, awaited. Make one per loop."""

    def __init__(self, settings: Settings, *, on_soft_cap: SoftCapCallback | None = None) -> None:
        self.on_soft_cap = on_soft_cap
        # Never connects by itself: it only lends its connection settings to the caller.
        options: dict[str, Any] = {
            "socket_timeout": settings.redis_timeout,
            "socket_connect_timeout": settings.redis_timeout,
            "decode_responses": True,
        }
        self.redis = async_client(settings.redis_url, **options)
        # Budgets and reports on the loop; the blocking usage path past Redis (and the
        # outage policies' reader thread) on the sync store, which connects only then.
        self.db = AsyncStore(
            make_async_engine(settings.database_url, settings.database_timeout),
            settings.key_prefix,
        )
        self.store = Store(
            make_engine(settings.database_url, settings.database_timeout), settings.key_prefix
        )
        GateCore.__init__(self, settings, self.store.outage_policies)
        try:
            self._check_shards(self.store)
        except ShardMismatch:
            self.store.engine.dispose()
            raise
        self._init_fallback()
        self._call: AsyncScriptCaller | AsyncClusterCaller
        if isinstance(self.redis, redis.asyncio.Redis):
            self._call = AsyncScriptCaller(self.redis, self._library, self.breaker)
        else:
            slots = SlotMap(parse_cluster_url(settings.redis_url), settings.redis_timeout)
            self._call = AsyncClusterCaller(
                slots,
                self._library,
                lambda name: redis.asyncio.Redis.from_url(slots.node_url(name), **options),
                self._new_breaker,
            )
        self._call.on_missing = self._library_missing
        self._call.on_failover = self._failed_over
        if settings.replica_ack:
            self._call.replica_ack(settings.replica_ack)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._replays: list[threading.Thread] = []  # journal replays, joined by aclose()
        self._closed = False
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # made outside a loop: started by its first call
        self._started()

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        on_soft_cap: SoftCapCallback | None = None,
        **overrides: Any,
    ) -> AsyncGate:
        """A gate configured from ``QUOTA_*`` variables, with keyword ``overrides``."""
        base = settings or Settings()
        if overrides:
            base = base.model_copy(update=overrides)
        return cls(base, on_soft_cap=on_soft_cap)

    async def aclose(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            if not task.get_loop().is_closed():
                task.cancel()
        for replay in self._replays:  # usage only the journal has: not dropped at exit
            await asyncio.to_thread(replay.join, 30.0)
        await self._call.aclose()
        await self.redis.aclose()
        await self.db.engine.dispose()
        await asyncio.to_thread(self.store.engine.dispose)

    async def __aenter__(self) -> AsyncGate:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _started(self) -> None:
        """On the first call in a loop: the epoch watch, the outage overrides, a spool.
        Another loop, while the first one lives in this process, is an error."""
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._pid == process.pid:
            return
        if self._loop is not None and self._pid == process.pid and not self._loop.is_closed():
            raise WrongEventLoop(
                "this AsyncGate runs on another event loop: make one AsyncGate per loop"
            )
        self._loop, self._pid = loop, process.pid
        self._tasks = set()  # a closed loop's, or the parent process's: gone
        self._spawn(self._watch())
        self._outage.refresh()
        if self._spooled:
            self._replay_spool()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ budgets

    async def get_budget(self, port_id: str) -> Budget:
        """The port's budget from Postgres (the truth); the default if none is stored."""
        budget, _ = await self.db.load_budget(v.port_id(port_id))
        return budget

    async def set_budget(
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
        budget, version = await self.db.save_budget(port, changes, who)
        self._outage.note(port, budget.outage_policy)
        try:
            await self._check_hold()  # a loss's hold: no rebuild yet (as Gate.set_budget)
            await self._refill(self._keys(port), budget, version)
        except BackendError:
            log.warning(
                "budget of %s saved in Postgres; its Redis copy is stale until the "
                "next reconcile or set_budget",
                port,
            )
        return budget

    async def budget_history(self, port_id: str) -> list[BudgetChange]:
        """The port's budget changes, oldest first."""
        return await self.db.budget_history(v.port_id(port_id))

    async def _fcall(self, op: str, keys: Any, args: Any) -> Any:
        self._started()
        try:
            return await self._call(op, keys, args)
        except redis.exceptions.RedisError as exc:
            raise RedisUnavailable(f"Redis failed: {exc}") from exc

    async def _load_budget(self, pk: PortKeys) -> None:
        await self._check_hold()
        budget, version = await self.db.load_budget(pk.port)
        await self._refill(pk, budget, version)

    async def _refill(self, pk: PortKeys, budget: Budget, version: int) -> None:
        """As `Gate._refill`: counters raised to the ledger's sums, then the budget copy."""
        w, since = self._rebuild_window()
        rows = await self.db.usage_by_day(pk.port, since)
        keys, args = self._rebuild_parts(pk, w, rows)
        if keys and await self._fcall("rebuild", keys, args):
            log.warning("port %s was missing from Redis: counters rebuilt from the ledger", pk.port)
        await self._cache_budget(pk, budget, version)

    async def _cache_budget(self, pk: PortKeys, budget: Budget, version: int) -> None:
        await self._fcall("budget_put", [pk.budget], budget_copy(budget, version))

    async def _check_hold(self) -> None:
        """As `Gate._check_hold`: RedisUnavailable while a loss's hold lasts."""
        now = time.monotonic()
        if now >= self._hold_until:
            try:
                ms = int(await self._call.command("PTTL", self.layout.recovering))
            except redis.exceptions.RedisError as exc:
                raise RedisUnavailable(f"Redis failed: {exc}") from exc
            if ms <= 0:
                return
            self._hold_until = now + ms / 1000
        raise RedisUnavailable(
            "Redis lost its data: ports are rebuilt once every gate has replayed its journal"
        )

    async def _hold(self, ms: int, *, start: bool) -> None:
        key = self.layout.recovering
        try:
            if start:
                await self._call.command("SET", key, "1", "NX", "PX", ms)
            await self._call.command("PEXPIRE", key, ms, "GT")
        except redis.exceptions.RedisError as exc:
            log.warning("Redis lost its data, and the hold of its ports failed: %s", exc)

    def _keep_hold(self, ms: int) -> None:
        """From the replay's worker thread: the hold, on the gate's loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._hold(ms, start=False), loop).result(10.0)
        except (TimeoutError, RuntimeError) as exc:  # the loop stopped or stalled
            log.warning("Redis lost its data, and the hold of its ports failed: %s", exc)

    # ---------------------------------------------------------------- decisions

    async def _run(
        self,
        op: str,
        pk: PortKeys,
        keys: tuple[str, ...],
        args: tuple[Any, ...],
        *,
        load_budget: bool = True,
    ) -> str:
        """As `Gate._run`: a period-keyed function, the budget copy loaded or the clock
        fixed as its reply asks."""
        timer = metrics.TIMERS[op]
        for _ in range(ATTEMPTS):
            call_keys, call_args = self._period_call(pk, keys, args)
            self._started()
            started = time.perf_counter()
            try:  # inline rather than _fcall: this is the hot path
                reply: str = await self._call(op, call_keys, call_args)
            except Unreplicated:
                raise  # as Gate._run
            except redis.exceptions.RedisError as exc:
                reply = await self._wait_out(exc, op, call_keys, call_args)
            timer.observe(time.perf_counter() - started)
            if self._owed:
                self._spawn(self._pay_owed())
            step = self._next(reply)
            if step == "budget" and load_budget:
                await self._load_budget(pk)
            elif step != "retry":
                return reply
        raise RedisUnavailable(f"script did not settle after {ATTEMPTS} attempts")

    async def _wait_out(
        self,
        exc: Exception,
        op: str,
        keys: tuple[Any, ...],
        args: tuple[Any, ...],
    ) -> str:
        """As `Gate._wait_out`, sleeping with asyncio."""
        wait = OutageWait(self.settings.outage_wait_seconds)
        while (pause := wait.pause(exc)) is not None:
            await asyncio.sleep(pause)
            try:
                reply: str = await self._call(op, keys, args)
                return reply
            except Unreplicated:
                raise
            except redis.exceptions.RedisError as again:
                exc = again
        raise RedisUnavailable(f"Redis failed: {exc}") from exc

    async def check(self, port_id: str, estimated_tokens: int) -> Decision:
        """The seed's decision for spending ``estimated_tokens``; changes nothing."""
        pk = self._port(port_id)
        estimate = v.tokens("estimated_tokens", estimated_tokens)
        try:
            reply = await self._run("check", pk, (pk.open,), (estimate, ""))
        except BackendError as exc:
            return metrics.count_decision("check", self._degraded(pk.port, estimate, exc))
        return metrics.count_decision("check", self._replies.decision(reply))

    async def check_many(self, requests: Iterable[tuple[str, int]]) -> list[Decision]:
        """`check` for many ``(port_id, estimated_tokens)`` pairs, in their order: one
        call per shard, all written at once."""
        items, results, pending = self._many(requests)
        try:
            for _ in range(ATTEMPTS):
                if not pending:
                    break
                pending = await self._check_many_round(items, pending, results)
            if pending:
                raise RedisUnavailable(f"check_many did not settle after {ATTEMPTS} attempts")
        except BackendError as exc:
            return self._many_degraded(items, results, exc)
        return cast(list[Decision], results)

    async def _check_many_round(
        self,
        items: list[tuple[PortKeys, int]],
        pending: dict[int, list[int]],
        results: list[Decision | None],
    ) -> dict[int, list[int]]:
        """One round trip: every shard's call in one write."""
        rnd = ManyRound(self, items, pending, results)
        self._started()
        started = time.perf_counter()
        try:
            replies = await self._call.call_many("check_many", list(rnd.calls()))
        except redis.exceptions.RedisError as exc:
            raise RedisUnavailable(f"Redis failed: {exc}") from exc
        metrics.TIMERS["check"].observe(time.perf_counter() - started)
        for n, reply in enumerate(replies):
            if isinstance(reply, redis.exceptions.ResponseError):
                raise RedisUnavailable(f"Redis failed: {reply}")
            rnd.handle(n, reply)
        rnd.counted()
        for i in rnd.missing:
            try:
                await self._load_budget(items[i][0])
            except BackendError as exc:  # Postgres down: this port by its policy
                rnd.unloaded(i, exc)
        return rnd.retry

    async def reserve(
        self, port_id: str, estimated_tokens: int, feature: str, user_id: str | None = None
    ) -> Decision:
        """As `Gate.reserve`: decide, and on success hold the tokens under a lease."""
        pk = self._port(port_id)
        estimate = v.tokens("estimated_tokens", estimated_tokens)
        feat, user = v.feature(feature), v.user_id(user_id)
        hex_id, op, keys, args = self._reserve_parts(pk, estimate, feat, user)
        try:
            reply = await self._run(op, pk, keys, args)
            if reply == NEEDS_FEATURE:  # a port with feature caps, new to this gate
                reply = await self._run("reserve_x", pk, keys, (*args, feat))
        except BackendError as exc:
            decision = self._degraded(pk.port, estimate, exc, feature=feat, user=user)
            return metrics.count_decision("reserve", decision)
        self._learn(pk, reply)
        if not reply.startswith(OK):
            return metrics.count_decision("reserve", self._replies.decision(reply))
        decision = self._reserved(pk, reply, hex_id, estimate, feat, user)
        return metrics.count_decision("reserve", decision)

    async def release(self, reservation_id: str) -> bool:
        """Return a reservation's hold. True if released now, False if already settled."""
        ref, keys, args = self._release_call(reservation_id)
        if ref.degraded:
            return self._recent.pop(reservation_id) is not None  # nothing held in Redis
        started = time.perf_counter()
        code = await self._fcall("release", keys, args)
        metrics.TIMERS["release"].observe(time.perf_counter() - started)
        return self._released(reservation_id, code)

    @asynccontextmanager
    async def reservation(
        self, port_id: str, estimated_tokens: int, feature: str, user_id: str | None = None
    ) -> AsyncIterator[AsyncReservation]:
        """``async with gate.reservation(...) as r: ...; await r.commit(...)``.

        Raises `BudgetExceeded` if refused; releases the hold if the block raises (or is
        cancelled) or ends without committing.
        """
        decision = await self.reserve(port_id, estimated_tokens, feature, user_id)
        if not decision.ok or decision.reservation_id is None:
            raise BudgetExceeded(decision)
        held = AsyncReservation(self, decision)
        try:
            yield held
        finally:
            if held.result is None:
                await self.release(decision.reservation_id)

    # -------------------------------------------------------------------- usage

    async def commit(
        self,
        reservation_id: str,
        *,
        input_tokens: int,
        output_tokens: int,
        provider: str,
        model: str,
        request_id: str | None = None,
    ) -> UsageResult:
        """As `Gate.commit`: settle a reservation with the actual usage, idempotently."""
        tin, tout = v.tokens("input_tokens", input_tokens), v.tokens("output_tokens", output_tokens)
        prov, mod = v.label("provider", provider), v.label("model", model)
        req = v.request_id(request_id)
        mine = self._recent.pop(reservation_id) if isinstance(reservation_id, str) else None
        ref = mine or parse_reservation_id(reservation_id)
        port, feature, user = ref.port, ref.feature, ref.user_id
        pk = self._keys(port)
        if ref.degraded:  # reserved during an outage: Redis holds nothing to settle
            event = self._commit_event(ref, prov, mod, tin, tout, req)
            return metrics.count_usage("commit", await self._record(pk, event))
        values = event_value(ref.event_id, port, user, feature, prov, mod, tin, tout, req)
        try:
            keys, args = self._commit_parts(pk, ref, tin + tout, values)
            reply = await self._usage_reply("commit", pk, keys, args, req)
        except Unreplicated as exc:
            reply = exc.reply
            event = self._commit_event(ref, prov, mod, tin, tout, req)
            await asyncio.to_thread(self._durable, event)
        except RedisUnavailable as exc:
            event = self._commit_event(ref, prov, mod, tin, tout, req)
            result = await asyncio.to_thread(self._fallback, event, exc, ref)
            return metrics.count_usage("commit", result)
        if reply == UNKNOWN:
            if mine is None:
                raise UnknownReservation(f"unknown reservation {reservation_id!r}")
            log.warning(
                "reservation %s unknown to Redis; its usage is recorded without it", reservation_id
            )
            event = self._commit_event(ref, prov, mod, tin, tout, req)
            return metrics.count_usage("commit", await self._record(pk, event))
        result = await self._usage_result(pk, reply, tin + tout, ref.event_id)
        if not result.duplicate:
            ms = self._now_ms()
            self._journal.add((ref.event_id, port, user, feature, prov, mod, tin, tout, req, ms))
        return metrics.count_usage("commit", result)

    async def record(
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
        """As `Gate.record`: count usage that had no reservation. Idempotent by request_id."""
        pk = self._port(port_id)
        feat, user = v.feature(feature), v.user_id(user_id)
        prov, mod = v.label("provider", provider), v.label("model", model)
        tin, tout = v.tokens("input_tokens", input_tokens), v.tokens("output_tokens", output_tokens)
        req = v.request_id(request_id)
        event = UsageEvent(uuid7(), pk.port, user, feat, prov, mod, tin, tout, req, self._now())
        return metrics.count_usage("record", await self._record(pk, event))

    async def _record(self, pk: PortKeys, e: UsageEvent) -> UsageResult:
        total = e.input_tokens + e.output_tokens
        try:
            reply = await self._usage_reply(
                "record", pk, (pk.stream,), (e.feature, total, _value_of(e)), e.request_id
            )
        except Unreplicated as exc:
            reply = exc.reply
            await asyncio.to_thread(self._durable, e)
        except RedisUnavailable as exc:
            return await asyncio.to_thread(self._fallback, e, exc)
        result = await self._usage_result(pk, reply, total, e.event_id)
        if not result.duplicate:
            self._journal_event(e)
        return result

    async def _usage_reply(
        self, op: str, pk: PortKeys, keys: tuple[str, ...], args: tuple[Any, ...], req: str | None
    ) -> str:
        keys, args, ttl = self._usage_parts(pk, keys, args, req)
        try:
            reply = await self._run(op, pk, keys, (*args, "0", *ttl))
        except DatabaseUnavailable:
            reply = NO_BUDGET
        if reply == NO_BUDGET:
            log.warning("budget copy missing and Postgres down: counting without a budget")
            reply = await self._run(op, pk, keys, (*args, "1", *ttl), load_budget=False)
        return reply

    async def _usage_result(
        self, pk: PortKeys, reply: str, total: int, event_id: str
    ) -> UsageResult:
        if self._spooled:
            self._replay_spool()
        result, alert = self._replies.usage(reply, total, event_id)
        if alert is not None and result.used_tokens is not None:
            await self._store_alert_async(self._alert(pk.port, result.used_tokens, alert))
        return result

    async def _store_alert_async(self, alert: SoftCapAlert) -> None:
        """`_store_alert` with the row written on the loop; the owner's hook, which may
        block, in a worker thread."""
        self._announce(alert)
        try:
            await self.db.save_alert(alert)
        except BackendError as exc:
            self._alert_not_stored(alert, exc)
        if self.on_soft_cap is not None:
            await asyncio.to_thread(self._call_hook, alert)

    async def _pay_owed(self) -> None:
        """As `Gate._pay_owed`: settle in Redis the commits the fallback stored."""
        while self._owed:
            owed = self._owed.popleft()
            try:
                await self._pay(owed)
            except BackendError:
                self._owed.appendleft(owed)
                return

    async def _pay(self, owed: Owed) -> None:
        e, ref = owed.event, owed.ref
        pk = self._keys(e.port_id)
        await self.db.unreconciled(e.event_id)
        total = e.input_tokens + e.output_tokens
        keys, args = self._commit_parts(pk, ref, total, _value_of(e))
        with contextlib.suppress(Unreplicated):  # the ledger has the event already
            await self._usage_reply("commit", pk, keys, args, e.request_id)

    # ------------------------------------------------------------------- status

    async def current_period_tokens(self, port_id: str, feature: str | None = None) -> int:
        """Tokens used in the port's current budget period (O(1), from Redis)."""
        feat = "" if feature is None else v.feature(feature)
        pk = self._port(port_id)
        st = self._replies.standing(await self._run("check", pk, (pk.open,), (0, feat)))
        return st.used if st.feature_used is None else st.feature_used

    async def status(self, port_id: str) -> Status:
        """Usage against the caps in the port's current period: what a banner needs."""
        pk = self._port(port_id)
        reply = await self._run("check", pk, (pk.open,), (0, ""))
        return self._status(pk, reply)

    async def breakdown(self, port_id: str) -> list[FeatureUsage]:
        """Per-feature tokens and calls in the port's current period, from Postgres."""
        port = v.port_id(port_id)
        budget = await self.get_budget(port)
        since = period_start(budget.period, datetime.now(UTC)).date()
        return await self.db.breakdown(port, since)

    async def daily_usage(self, port_id: str, start: date, end: date) -> list[DailyUsage]:
        """Per-day, per-feature tokens and calls for ``start`` ≤ day ≤ ``end`` (UTC days)."""
        self._days(start, end)
        port = v.port_id(port_id)
        return await self.db.daily(port, start, end)

    async def alerts(self, port_id: str) -> list[SoftCapAlert]:
        """The soft-cap alerts stored for the port, oldest first."""
        return await self.db.alerts(v.port_id(port_id))

    def breaker_states(self) -> dict[str, str]:
        """This gate's circuit breakers to Redis: ``closed``, ``half-open`` or ``open``,
        by primary ("host:port") on a cluster, else under "redis"."""
        if isinstance(self._call, AsyncClusterCaller):
            return {name: b.state for name, b in sorted(self._call.breakers.items())}
        return {"redis": self.breaker.state}

    # ------------------------------------------------------------------ outages

    async def _watch(self) -> None:
        """As `Gate._watch`: every second, has Redis lost its data?"""
        while not self._closed:
            await asyncio.sleep(EPOCH_SECONDS)
            try:
                await self._check_epoch()
            except (redis.exceptions.RedisError, BackendError):
                continue

    async def _check_epoch(self) -> None:
        call = self._call
        owner = None
        if isinstance(call, AsyncClusterCaller):
            if not call.slots.version:  # not read yet: no call made
                await call.refresh()
            owner = call.owner
        values = {}
        for key in self._epoch_keys(owner):
            if await call.command("GET", key) is None:
                await call.command("SET", key, f"{random.getrandbits(64):016x}", "NX")
            values[key] = str(await call.command("GET", key))
        if self._epochs_seen(values):
            await self._redis_lost()

    async def _library_missing(self) -> None:
        """As `Gate._library_missing`: the epoch keys read, not written."""
        call = self._call
        try:
            owner = call.owner if isinstance(call, AsyncClusterCaller) else None
            keys = self._epoch_keys(owner) if self._epochs else []
            same = bool(keys)
            for key in keys:
                same = same and await call.command("GET", key) == self._epochs.get(key, "")
        except redis.exceptions.RedisError:
            same = False
        if not same:
            await self._redis_lost()

    async def _redis_lost(self) -> None:
        """As `Gate._redis_lost`: hold the ports, replay the journal in a thread."""
        events = self._journal.take()
        if events or self._epoch is not None:
            await self._hold(HOLD_MS, start=True)
        if events:
            self._start_replay(events)


class AsyncReservation:
    """A held reservation inside `AsyncGate.reservation`; await `commit` once done."""

    def __init__(self, gate: AsyncGate, decision: Decision) -> None:
        self.gate = gate
        self.decision = decision
        self.result: UsageResult | None = None

    @property
    def reservation_id(self) -> str:
        assert self.decision.reservation_id is not None  # set for every ok reserve
        return self.decision.reservation_id

    async def commit(
        self,
        *,
        input_tokens: int,
        output_tokens: int,
        provider: str,
        model: str,
        request_id: str | None = None,
    ) -> UsageResult:
        self.result = await self.gate.commit(
            self.reservation_id,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            provider=provider,
            model=model,
            request_id=request_id,
        )
        return self.result
