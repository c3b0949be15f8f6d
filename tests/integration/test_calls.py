"""The gate's own call path: per-thread connections that survive the server dropping
them, a forked child, and many threads at once."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time

import pytest
import redis

from quota import Gate, RedisUnavailable

# The sync transport's own connections to one server (the cluster's: test_cluster.py).
pytestmark = pytest.mark.standalone


@pytest.fixture
def gate(sync_gate: Gate) -> Gate:
    """These tests are of the sync gate's own connections (AsyncGate's: test_async.py)."""
    return sync_gate


def test_dropped_connections_are_reopened_silently(gate: Gate, r: redis.Redis) -> None:
    gate.set_budget("p", enabled=True, soft_cap_tokens=10, hard_cap_tokens=100, updated_by="u")
    assert gate.check("p", 1).ok
    killed = r.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    assert gate.check("p", 1).ok  # a new connection, no error
    r.client_kill_filter(_type="normal", skipme=True)
    assert [d.ok for d in gate.check_many([("p", 1), ("q", 10**6)])] == [True, True]
    gate.record(port_id="p", feature="f", provider="p", model="m", input_tokens=5, output_tokens=0)
    assert gate.current_period_tokens("p") == 5
    assert gate._call.open_connections == 1  # the dropped connections are not kept


def _child(gate: Gate, out: mp.Queue[int]) -> None:
    out.put(gate.current_period_tokens("p"))


def test_a_forked_child_uses_its_own_connection(gate: Gate) -> None:
    gate.record(
        port_id="p", feature="f", provider="p", model="m", input_tokens=7, output_tokens=0
    )  # the parent's thread now holds a connection
    ctx = mp.get_context("fork")
    out: mp.Queue[int] = ctx.Queue()
    child = ctx.Process(target=_child, args=(gate, out))
    child.start()
    assert out.get(timeout=30) == 7
    child.join()
    assert child.exitcode == 0
    assert gate.current_period_tokens("p") == 7  # and the parent's still works


def test_each_thread_gets_its_own_connection(gate: Gate, r: redis.Redis) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(50):
                gate.record(
                    port_id="p",
                    feature="f",
                    provider="p",
                    model="m",
                    input_tokens=1,
                    output_tokens=0,
                )
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert gate.current_period_tokens("p") == 400


def test_a_call_that_outlives_the_timeout_fails_and_the_next_reconnects(
    gate: Gate, r: redis.Redis
) -> None:
    """The read timeout holds on the gate's own socket: a stalled server is reported
    as a timeout, not waited for, and not retried on a new connection (the function
    may have run)."""
    # Under the fixture's prefix, which it removes afterwards.
    with Gate(gate.settings.model_copy(update={"redis_timeout": 0.3})) as impatient:
        impatient.set_budget(
            "p", enabled=True, soft_cap_tokens=10, hard_cap_tokens=100, updated_by="u"
        )
        assert impatient.check("p", 1).ok  # this thread's connection is open
        connections = r.info("stats")["total_connections_received"]
        r.client_pause(1000)
        started = time.monotonic()
        with pytest.raises(RedisUnavailable, match="Timeout reading"):
            impatient.current_period_tokens("p")  # a report raises; a decision degrades
        waited = time.monotonic() - started
        assert 0.25 < waited < 0.9
        time.sleep(1.2 - waited)  # the pause is over
        assert r.info("stats")["total_connections_received"] == connections
        assert impatient.check("p", 1).ok
