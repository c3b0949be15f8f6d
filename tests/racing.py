"""Racing helpers: processes forked together, each running threads that start at one
barrier, each process putting one result on a queue."""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections.abc import Callable
from typing import Any


def run_threads(count: int, target: Callable[[int], None]) -> None:
    """``target(i)`` for i in range(count), on as many threads at once; back when all are."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def race_processes(target: Callable[..., None], args: tuple[Any, ...], processes: int,
                   parties: int) -> list[Any]:  # fmt: skip
    """Fork ``processes`` processes running ``target(*args, barrier, out)`` (a barrier of
    ``parties``, a queue each puts its result on); their results, all exited 0."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(parties)
    out: mp.Queue[Any] = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return results
