"""Redis faults against a redis-server of the test's own: killed, hung (DEBUG SLEEP,
SIGSTOP), restarted empty. Decisions follow the outage policy; usage is counted once,
whichever backends saw it; caps hold after Redis lost its data."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from multiprocessing.synchronize import Event as EventType

import pytest
import redis
from sqlalchemy import Engine, text

from quota import Decision, Gate, RateLimit, Settings
from quota.drain import Drainer
from quota.periods import Windows, from_ms
from quota.reconcile import Reconciler
from tests.servers import RedisServer


def drain(gate: Gate, server: RedisServer, pg: Engine) -> None:
    """What the drain job does for every shard: drain, then reconcile marked ports."""
    with server.client() as c:
        drainer = Drainer(gate.settings, c, pg)
        reconciler = Reconciler(gate.settings, c, pg, drainer)
        for shard in range(gate.settings.shards):
            drainer.drain_shard(shard, max_seconds=30)
        reconciler.repair_direct(range(gate.settings.shards))


def ledger(pg: Engine) -> list[tuple[str, int, str | None]]:
    with pg.connect() as conn:
        rows = conn.execute(
            text("SELECT port_id, total_tokens, request_id FROM ledger ORDER BY occurred_at")
        )
        return [(r[0], int(r[1]), r[2]) for r in rows]


def rec(gate: Gate, tokens: int = 10, request_id: str | None = None, port: str = "p") -> object:
    return gate.record(
        port_id=port,
        feature="f",
        provider="x",
        model="m",
        input_tokens=tokens,
        output_tokens=0,
        request_id=request_id,
    )


def after_hold(gate: Gate, port: str = "p", estimate: int = 1) -> Decision:
    """The first check past a loss's hold (the outage policy decides until then)."""
    deadline = time.monotonic() + 15
    while (d := gate.check(port, estimate)).degraded and time.monotonic() < deadline:
        time.sleep(0.05)
    return d


def open_breaker(gate: Gate) -> None:
    for _ in range(gate.settings.breaker_failures + 1):
        gate.check("p", 1)
    assert gate.breaker.state == "open"


def test_closed_policy_refuses_in_microseconds_once_the_breaker_is_open(
    fgate: Gate, server: RedisServer
) -> None:
    fgate.set_budget("p", enabled=True, soft_cap_tokens=1000, hard_cap_tokens=1000, updated_by="u")
    assert fgate.check("p", 1).ok
    server.kill()
    open_breaker(fgate)
    d = fgate.check("p", 1)
    assert (d.ok, d.reason, d.degraded) == (False, "unavailable", True)
    r = fgate.reserve("p", 1, "f")
    assert (r.ok, r.reservation_id, r.degraded) == (False, None, True)
    assert [x.reason for x in fgate.check_many([("p", 1), ("q", 2)])] == ["unavailable"] * 2
    # Open: no connection is even tried (the server would refuse it in far less than
    # the socket timeout anyway, so count the attempts instead of timing them).
    before = fgate._call.open_connections
    for _ in range(1000):
        fgate.check("p", 1)
    assert fgate._call.open_connections == before == 0
    server.start()
    deadline = time.monotonic() + 5  # the breaker's probe lets one call through
    while not (d := fgate.check("p", 1)).ok and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (d.ok, d.degraded) == (True, False)
    assert fgate.breaker.state == "closed"


def test_a_rate_limited_port_is_refused_under_closed_while_redis_is_down(
    fgate: Gate, server: RedisServer
) -> None:
    # A disabled budget with a rate limit: the limit is what "closed" must keep.
    fgate.set_budget("limited", enabled=False, updated_by="u",
                     rate_limits=[RateLimit(requests=100, per_seconds=60)])  # fmt: skip
    assert fgate.reserve("limited", 1, "f").ok
    server.kill()
    d = fgate.reserve("limited", 1, "f")
    assert (d.ok, d.reason, d.degraded, d.rate) == (False, "unavailable", True, ())
    server.start()
    deadline = time.monotonic() + 5
    while not (d := fgate.reserve("limited", 1, "f")).ok and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (d.ok, d.degraded) == (True, False)
    # Buckets live in Redis only: one lost with it starts full (99), one kept has 98.
    assert [s.limit for s in d.rate] == [100]
    assert d.rate[0].remaining in (98, 99)


def test_the_probe_of_a_hung_redis_is_the_probers_not_a_callers(
    fault_settings: Settings, server: RedisServer, pg: Engine
) -> None:
    # A probe sent by a caller would hold that caller for the whole socket timeout.
    settings = fault_settings.model_copy(update={"breaker_reset_seconds": 0.05})
    with Gate(settings) as gate:
        assert gate.check("p", 1).ok
        server.pause()
        try:
            gate.check("p", 1)  # times out: the circuit opens (a timeout is not retried)
            open_breaker(gate)
            seen: set[str] = set()
            slowest = 0.0
            until = time.monotonic() + 1.5  # three socket timeouts: probes come and go
            while time.monotonic() < until:
                t0 = time.perf_counter()
                d = gate.check("p", 1)
                slowest = max(slowest, time.perf_counter() - t0)
                assert (d.reason, d.degraded) == ("unavailable", True)
                seen.add(gate.breaker.state)
            assert seen == {"open", "half-open"}  # probes were out, none of them ours
            assert gate._call.open_connections == 0  # no caller even connected
            assert slowest < settings.redis_timeout  # no caller waited on the hung socket
        finally:
            server.resume()
        deadline = time.monotonic() + 5
        while gate.breaker.state != "closed" and time.monotonic() < deadline:
            time.sleep(0.01)  # nobody calls: the prober closes the circuit on its own
        assert gate.breaker.state == "closed"
        assert gate.check("p", 1).degraded is False


def test_open_policy_allows_and_its_commit_is_counted(
    fault_settings: Settings, server: RedisServer, pg: Engine
) -> None:
    with Gate(fault_settings.model_copy(update={"outage_policy": "open"})) as gate:
        gate.set_budget(
            "p", enabled=True, soft_cap_tokens=1000, hard_cap_tokens=1000, updated_by="u"
        )
        server.kill()
        d = gate.reserve("p", 50, "f", user_id="u1")
        assert (d.ok, d.degraded) == (True, True)
        assert d.reservation_id
        done = gate.commit(
            d.reservation_id, input_tokens=40, output_tokens=2, provider="x", model="m"
        )
        again = gate.commit(
            d.reservation_id, input_tokens=40, output_tokens=2, provider="x", model="m"
        )
        assert (done.stored, done.backend, done.duplicate) == (True, "postgres", False)
        assert again.duplicate
        assert ledger(pg) == [("p", 42, None)]
        server.start()
        gate.breaker.reset()
        gate.check("p", 1)  # Redis answers: the port is marked for the drain job
        drain(gate, server, pg)
        assert gate.current_period_tokens("p") == 42
        assert ledger(pg) == [("p", 42, None)]


def test_allowance_policy_bounds_what_one_process_admits(
    fault_settings: Settings, server: RedisServer, pg: Engine
) -> None:
    settings = fault_settings.model_copy(
        update={"outage_policy": "allowance", "outage_allowance_tokens": 100}
    )
    with Gate(settings) as gate:
        gate.set_budget("p", enabled=True, hard_cap_tokens=10**6, updated_by="u")
        gate.set_budget("strict", enabled=True, outage_policy="closed", updated_by="u")
        server.kill()
        admitted = sum(gate.reserve("p", 30, "f").ok for _ in range(10))
        assert admitted == 3  # 90 of 100; a fourth would pass the allowance
        assert gate.check("p", 10).ok  # 100
        assert not gate.check("p", 1).ok
        assert not gate.check("strict", 1).ok  # its budget says closed
        assert gate.check("other", 100).ok  # each port its own allowance


def test_a_call_that_timed_out_but_ran_is_counted_once(
    fgate: Gate, server: RedisServer, pg: Engine
) -> None:
    fgate.set_budget("p", enabled=True, hard_cap_tokens=10**6, updated_by="u")
    rec(fgate, 1, "warm")
    with server.client() as c:
        sleeper = threading.Thread(target=lambda: c.execute_command("DEBUG", "SLEEP", "3"))
        sleeper.start()
        time.sleep(0.1)
        # Sent while Redis sleeps: each times out (0.5 s) and falls back to Postgres,
        # and each runs in Redis once it wakes.
        results = [rec(fgate, 10 + i, f"slow-{i}") for i in range(2)] + [rec(fgate, 20)]
        sleeper.join()
    assert {r.backend for r in results} == {"postgres"}  # type: ignore[attr-defined]
    fgate.breaker.reset()
    ran = fgate.current_period_tokens("p")
    assert ran > 1  # the first ran in Redis once it woke (others never reached it)
    drain(fgate, server, pg)
    rows = ledger(pg)
    assert sorted(t for _, t, _ in rows) == [1, 10, 11, 20]
    assert fgate.current_period_tokens("p") == 1 + 10 + 11 + 20  # counted once each


def test_eight_threads_committing_one_reservation_in_an_outage_count_it_once(
    fgate: Gate, server: RedisServer, pg: Engine
) -> None:
    fgate.set_budget("p", enabled=True, soft_cap_tokens=1000, hard_cap_tokens=1000, updated_by="u")
    d = fgate.reserve("p", 100, "f")
    assert d.reservation_id
    rid = d.reservation_id
    server.kill()
    out: list[object] = []

    def commit() -> None:
        out.append(fgate.commit(rid, input_tokens=70, output_tokens=0, provider="x", model="m"))

    threads = [threading.Thread(target=commit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(not r.duplicate for r in out) == 1  # type: ignore[attr-defined]
    assert ledger(pg) == [("p", 70, None)]
    server.start()  # empty: the hold is gone with it
    fgate.breaker.reset()
    assert fgate.current_period_tokens("p") == 70  # rebuilt from the ledger
    drain(fgate, server, pg)
    assert fgate.current_period_tokens("p") == 70


def test_a_fallback_commit_releases_its_hold_when_redis_returns(
    fgate: Gate, server: RedisServer, pg: Engine
) -> None:
    fgate.set_budget("p", enabled=True, soft_cap_tokens=1000, hard_cap_tokens=1000, updated_by="u")
    d = fgate.reserve("p", 600, "f")
    assert d.reservation_id
    server.pause()  # hung, not gone: the hold stays in Redis
    try:
        done = fgate.commit(
            d.reservation_id, input_tokens=30, output_tokens=0, provider="x", model="m"
        )
    finally:
        server.resume()
    assert done.backend == "postgres"
    fgate.breaker.reset()
    status = fgate.status("p")
    assert (status.reserved_tokens, status.used_tokens) == (0, 30)
    again = fgate.commit(
        d.reservation_id, input_tokens=30, output_tokens=0, provider="x", model="m"
    )
    assert again.duplicate
    drain(fgate, server, pg)
    assert ledger(pg) == [("p", 30, None)]


def test_a_request_id_redis_saw_before_the_outage_is_counted_once(
    fgate: Gate, server: RedisServer, pg: Engine
) -> None:
    server.stop()
    server.persist = True  # the first record must survive the restart
    server.start()
    fgate.breaker.reset()
    first = rec(fgate, 10, "req-1")
    assert first.backend == "redis"  # type: ignore[attr-defined]
    server.pause()
    try:
        retried = rec(fgate, 10, "req-1")  # Redis hung: the fallback cannot know
    finally:
        server.resume()
    assert retried.backend == "postgres"  # type: ignore[attr-defined]
    fgate.breaker.reset()
    drain(fgate, server, pg)
    assert ledger(pg) == [("p", 10, "req-1")]


def test_redis_restarted_empty_does_not_reopen_a_spent_cap(
    fgate: Gate, server: RedisServer, pg: Engine
) -> None:
    fgate.set_budget("p", enabled=True, soft_cap_tokens=5000, hard_cap_tokens=5000, updated_by="u")
    for _ in range(10):
        rec(fgate, 500)
    assert not fgate.check("p", 1).ok
    drain(fgate, server, pg)
    server.restart()
    fgate.breaker.reset()
    d = fgate.check("p", 1)  # held: other gates may not have replayed their journals yet
    assert (d.ok, d.reason, d.degraded) == (False, "unavailable", True)
    d = after_hold(fgate)
    assert (d.ok, d.reason, d.used_tokens, d.degraded) == (False, "hard-cap-exceeded", 5000, False)
    assert not fgate.reserve("p", 1, "f").ok


def test_checks_answer_at_the_memory_limit_and_usage_falls_back(
    settings: Settings, pg: Engine
) -> None:
    server = RedisServer(extra=["--maxmemory", "3mb", "--maxmemory-policy", "noeviction"]).start()
    try:
        with Gate(settings.model_copy(update={"redis_url": server.url})) as gate:
            gate.set_budget("p", enabled=True, hard_cap_tokens=10**6, updated_by="u")
            rec(gate, 5)
            with server.client() as c:
                filler = "x" * 10_000
                filled = 0
                while filled < 10_000:
                    try:
                        c.set(f"fill:{filled}", filler)
                    except redis.exceptions.OutOfMemoryError:
                        break
                    filled += 1
                assert 0 < filled < 10_000
            d = gate.check("p", 1)
            assert (d.ok, d.degraded, d.used_tokens) == (True, False, 5)
            assert rec(gate, 7).backend == "postgres"  # type: ignore[attr-defined]
    finally:
        server.cleanup()


def test_health_fails_for_an_evicting_redis_and_warns_without_persistence(
    settings: Settings, pg: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from quota import runtime
    from quota.cli import main

    server = RedisServer(extra=["--maxmemory", "50mb", "--maxmemory-policy", "allkeys-lru"]).start()
    try:
        monkeypatch.setenv("QUOTA_REDIS_URL", server.url)
        monkeypatch.setenv("QUOTA_KEY_PREFIX", settings.key_prefix)
        runtime.reset()
        result = CliRunner().invoke(main, ["health"])
        assert result.exit_code == 1
        assert "allkeys-lru" in result.stdout
        with server.client() as c:
            c.config_set("maxmemory-policy", "noeviction")
        result = CliRunner().invoke(main, ["health"])
        assert result.exit_code == 0
        assert "AOF persistence is off" in result.stdout
    finally:
        runtime.reset()
        server.cleanup()


def test_a_shard_redis_lost_is_reconciled_by_its_next_drain(
    fgate: Gate, server: RedisServer, pg: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No gate call needed: the drain job finds the consumer group gone, and reconciles
    the shard's ports from the ledger within its run."""
    from quota import runtime
    from workers import jobs

    monkeypatch.setenv("QUOTA_REDIS_URL", server.url)
    monkeypatch.setenv("QUOTA_KEY_PREFIX", fgate.settings.key_prefix)
    runtime.reset()
    try:
        ports = [f"port-{i}" for i in range(6)]
        for i, port in enumerate(ports):
            rec(fgate, 100 + i, port=port)
        groups = range(fgate.settings.drain_jobs)
        for group in groups:
            jobs.drain(group)
        server.restart()
        runtime.reset()  # the job's connections were to the old process
        repaired = sum(int(jobs.drain(group)["repaired"]) for group in groups)
        assert repaired == len(ports)
        with server.client() as c:
            sec, _ = c.time()
            month = Windows.at(from_ms(sec * 1000)).month_id
            used = [int(c.hget(fgate.layout.for_port(p).usage("month", month), "t") or 0)
                    for p in ports]  # fmt: skip
        assert used == [100 + i for i in range(len(ports))]
    finally:
        runtime.reset()


def test_usage_written_past_redis_is_counted_even_if_its_writer_died(
    fault_settings: Settings, server: RedisServer, pg: Engine
) -> None:
    """The fallback's rows wait in ledger_direct until reconciliation counts them: the
    drain job does it whoever wrote them, so a writer that died changes nothing."""
    with Gate(fault_settings) as gate:
        rec(gate, 5)
        server.kill()
        assert rec(gate, 40).backend == "postgres"  # type: ignore[attr-defined]
        layout = gate.layout
    server.start()  # empty: no AOF here, and the writer is gone
    with Gate(fault_settings) as gate:
        drain(gate, server, pg)  # the drain job alone: no gate call rebuilds the port
        with server.client() as c:
            sec, _ = c.time()
            month = Windows.at(from_ms(int(sec) * 1000)).month_id
            used = c.hget(layout.for_port("p").usage("month", month), "t")
        assert used == "40"  # the 5 died with Redis, undrained
        with pg.connect() as conn:
            pending = conn.execute(
                text("SELECT count(*) FROM ledger_direct WHERE NOT reconciled")
            ).scalar_one()
        assert pending == 0


def test_usage_redis_lost_undrained_is_replayed_from_the_journal(
    fgate: Gate, server: RedisServer, pg: Engine
) -> None:
    """No persistence, and Redis dies before the drain took half the usage: the gate's
    journal puts that half in the ledger before the port is rebuilt, so the spent cap
    stays spent and nothing is in the ledger twice."""
    fgate.set_budget("p", enabled=True, soft_cap_tokens=5000, hard_cap_tokens=5000, updated_by="u")
    for i in range(5):
        rec(fgate, 500, f"early-{i}")
    drain(fgate, server, pg)  # these five reach the ledger
    for i in range(5):
        rec(fgate, 500, f"late-{i}")  # these five only Redis has
    assert not fgate.check("p", 1).ok
    server.restart()
    fgate.breaker.reset()
    d = after_hold(fgate)
    assert (d.ok, d.reason, d.used_tokens) == (False, "hard-cap-exceeded", 5000)
    rows = ledger(pg)
    assert sorted(str(r) for _, _, r in rows) == [f"early-{i}" for i in range(5)] + [
        f"late-{i}" for i in range(5)
    ]
    drain(fgate, server, pg)
    assert len(ledger(pg)) == 10


def test_a_gate_that_did_not_reload_the_library_still_replays_its_journal(
    fault_settings: Settings, server: RedisServer, pg: Engine
) -> None:
    """Another process (the drain, here a second gate) met the missing library first
    and reloaded it: this gate learns of the loss from the epoch key within a second."""
    with Gate(fault_settings) as gate, Gate(fault_settings) as other:
        gate.set_budget("p", enabled=True, soft_cap_tokens=900, hard_cap_tokens=900, updated_by="u")
        deadline = time.monotonic() + 5
        while gate._epoch is None and time.monotonic() < deadline:  # its first look
            time.sleep(0.05)
        for i in range(3):
            rec(gate, 300, f"r-{i}")
        server.restart()
        other.breaker.reset()
        other.check("q", 1)  # reloads the library
        deadline = time.monotonic() + 5
        while len(ledger(pg)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sorted(str(r) for _, _, r in ledger(pg)) == ["r-0", "r-1", "r-2"]
        gate.breaker.reset()
        d = after_hold(gate)
        assert (d.ok, d.used_tokens) == (False, 900)


def _other_process(settings: Settings, ready: mp.Queue[int], done: EventType) -> None:
    """Another process's gate: counts 600 tokens that only Redis and its journal have,
    then lives on (its watch thread learns of the loss) until the test is done."""
    with Gate(settings) as gate:
        deadline = time.monotonic() + 10
        while gate._epoch is None and time.monotonic() < deadline:  # its first look
            time.sleep(0.05)
        for i in range(6):
            rec(gate, 100, f"other-{i}")
        ready.put(os.getpid())
        done.wait(60)


def test_after_a_loss_no_port_is_rebuilt_before_every_gate_replayed_its_journal(
    fgate: Gate, server: RedisServer, pg: Engine
) -> None:
    """Two processes counted usage that only Redis had (no drain yet) when it restarted
    empty. The first to call must not rebuild the port from a ledger that lacks the
    other's journal: ports are held (decided by the outage policy) until every gate had
    time to replay, and then rebuilt with all of it."""
    fgate.set_budget("p", enabled=True, soft_cap_tokens=1000, hard_cap_tokens=1000, updated_by="u")
    ctx = mp.get_context("fork")
    ready: mp.Queue[int] = ctx.Queue()
    done = ctx.Event()
    child = ctx.Process(target=_other_process, args=(fgate.settings, ready, done), daemon=True)
    child.start()
    try:
        ready.get(timeout=20)
        for i in range(3):
            rec(fgate, 100, f"mine-{i}")
        assert fgate.check("p", 1).used_tokens == 900
        server.restart()
        fgate.breaker.reset()
        d = fgate.reserve("p", 200, "f")
        assert (d.ok, d.reason, d.degraded) == (False, "unavailable", True)
        d = after_hold(fgate, "p", 200)
        assert (d.ok, d.reason, d.used_tokens, d.degraded) == (
            False,
            "estimated-exceeds-cap",
            900,
            False,
        )
        assert sorted(str(r) for _, _, r in ledger(pg)) == sorted(
            [f"mine-{i}" for i in range(3)] + [f"other-{i}" for i in range(6)]
        )
    finally:
        done.set()
        child.join(20)
