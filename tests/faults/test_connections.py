"""Item 1 of the fault work: a Gate must survive many short-lived threads and many
failed calls; neither may use up a connection budget for good."""

from __future__ import annotations

import multiprocessing as mp
import threading

from quota import Gate
from tests.servers import RedisServer


def _in_threads(n: int, fn: object, width: int = 50) -> list[BaseException]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()  # type: ignore[operator]
        except BaseException as exc:
            errors.append(exc)

    for start in range(0, n, width):
        batch = [threading.Thread(target=run) for _ in range(min(width, n - start))]
        for t in batch:
            t.start()
        for t in batch:
            t.join()
    return errors


def test_many_short_lived_threads_leave_the_gate_working(fgate: Gate, server: RedisServer) -> None:
    fgate.set_budget(
        "p", enabled=True, soft_cap_tokens=10**6, hard_cap_tokens=10**7, updated_by="u"
    )
    errors = _in_threads(400, lambda: fgate.check("p", 1))
    assert errors == []
    d = fgate.check("p", 1)
    assert (d.ok, d.degraded) == (True, False)
    with server.client() as c:  # the dead threads' connections were closed, not kept
        assert int(c.info("clients")["connected_clients"]) < 60


def test_failed_calls_do_not_use_up_connections(fgate: Gate, server: RedisServer) -> None:
    fgate.set_budget(
        "p", enabled=True, soft_cap_tokens=10**6, hard_cap_tokens=10**7, updated_by="u"
    )
    assert fgate.check("p", 1).ok
    server.kill()
    for _ in range(150):
        fgate.record(
            port_id="p", feature="f", provider="x", model="m", input_tokens=1, output_tokens=0
        )
        fgate.check("p", 1)
    server.start()
    fgate.breaker.reset()  # no waiting for the breaker's probe here
    d = fgate.check("p", 1)
    assert (d.ok, d.degraded) == (True, False)


def _child_reads(gate: Gate, out: mp.Queue[object]) -> None:
    try:
        out.put((gate.get_budget("p").hard_cap_tokens, gate.check("p", 1).ok))
    except BaseException as exc:  # reported, so that the parent's assertion shows it
        out.put(repr(exc))


def test_a_gate_made_before_fork_works_in_the_children_and_the_parent(fgate: Gate) -> None:
    """gunicorn --preload: the parent made the Gate and used both backends, then forked."""
    fgate.set_budget("p", enabled=True, soft_cap_tokens=1, hard_cap_tokens=500, updated_by="u")
    assert fgate.get_budget("p").hard_cap_tokens == 500  # a pooled Postgres connection
    assert fgate.check("p", 1).ok  # and this thread's Redis connection
    ctx = mp.get_context("fork")
    out: mp.Queue[object] = ctx.Queue()
    children = [ctx.Process(target=_child_reads, args=(fgate, out)) for _ in range(3)]
    for child in children:
        child.start()
    results = [out.get(timeout=30) for _ in children]
    for child in children:
        child.join(30)
    assert results == [(500, True)] * 3
    assert [c.exitcode for c in children] == [0, 0, 0]
    assert fgate.get_budget("p").hard_cap_tokens == 500  # the parent's pool still works
    assert fgate.check("p", 1).ok


def test_after_a_restart_the_library_reload_never_surfaces(
    fgate: Gate, server: RedisServer
) -> None:
    """Redis restarted empty: threads racing to reload the function library see no error
    and no degraded decision once the server answers."""
    fgate.set_budget("p", enabled=True, hard_cap_tokens=10**9, updated_by="u")
    assert fgate.check("p", 1).ok
    server.restart()
    fgate.breaker.reset()
    seen: list[object] = []

    def calls() -> None:
        d = fgate.reserve("p", 5, "f")
        seen.append(d.degraded)
        assert d.reservation_id
        seen.append(
            fgate.commit(
                d.reservation_id, input_tokens=1, output_tokens=1, provider="x", model="m"
            ).backend
        )
        seen.extend(x.degraded for x in fgate.check_many([("p", 1), ("q", 1)]))

    assert _in_threads(16, calls, width=16) == []
    assert set(seen) == {False, "redis"}
