"""Item 1 of the fault work: a Gate must survive many short-lived threads and many
failed calls; neither may use up a connection budget for good."""

from __future__ import annotations

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
    fgate._call.breaker.reset()  # no waiting for the breaker's probe here
    d = fgate.check("p", 1)
    assert (d.ok, d.degraded) == (True, False)
