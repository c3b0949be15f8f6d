"""The client's work around each gate call (validation, keys, packing the FCALL,
building the result, metrics), with the FCALL answered in-process by the reply Redis
gave the same call: no system call and no wait. Within a run the operations take
turns, so their rows compare; between runs they follow the VM's speed (on 2026-11-26
the same code measured 6-10 µs in the morning and 8-30 in the afternoon), so a change
to the client's Python is judged by old and new code alternating in one process.

Each operation's reply is captured from one real call first; then the gate's call path
(`ScriptCaller`: pack the FCALL, write it, read the reply) is swapped for one that packs
it and returns that reply. Between real round trips the same Python runs 2-3x slower
than here, its caches cold (docs/BENCHMARKS.md, "Client").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import hiredis
import redis

from quota.gate import Gate
from quota.settings import Settings
from tests.benchmarks._measure import Row, reset
from tests.benchmarks.hotpath import NAMES, budgets, operations

_OPS = ("check", "reserve", "commit", "record")


def _best_us(
    loops: dict[str, Callable[[], object]],
    calls: int,
    before: dict[str, Callable[[], object]] | None = None,
    rounds: int = 5,
) -> dict[str, float]:
    """Microseconds per call of each loop: the best of ``rounds`` timed loops of
    ``calls``, as timeit advises (the slower ones measure what else the machine did).
    The loops take turns round by round: a slow patch of this VM can outlast one
    operation's loops back to back (one run measured record at twice another's), but
    not its loops spread over the whole section. ``before[name]``, if given, runs
    untimed before each of that loop's turns."""
    best = dict.fromkeys(loops, float("inf"))
    for _ in range(rounds):
        for name, fn in loops.items():
            if before and name in before:
                before[name]()
            started = time.perf_counter()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - started) / calls)
    return {name: b * 1e6 for name, b in best.items()}


def _pack(function: str, keys: Sequence[Any], args: Sequence[Any]) -> object:
    """What ScriptCaller sends for one call."""
    return hiredis.pack_command(("FCALL", function, len(keys), *keys, *args))


def _check_many_row(gate: Gate, calls: int, ports: int = 1000) -> Row:
    """check_many's own work per port, its FCALLs (one per shard) answered in-process
    by the replies Redis gave the same batch."""
    names = [f"tenant-{i}" for i in range(ports)]
    budgets(gate, names)
    requests = [(p, 1500) for p in names]
    real = gate._call.call_each
    replies: list[Any] = []

    def capture(
        op: str,
        calls: Callable[[], Iterable[tuple[Sequence[Any], Sequence[Any]]]],
        handle: Callable[[int, Any], None],
    ) -> None:
        def keep(n: int, reply: Any) -> None:
            replies.append(reply)
            handle(n, reply)

        real(op, calls, keep)

    def canned(
        op: str,
        calls: Callable[[], Iterable[tuple[Sequence[Any], Sequence[Any]]]],
        handle: Callable[[int, Any], None],
    ) -> None:
        function = gate._library.functions[op]
        sent = 0
        for keys, args in calls():
            _pack(function, keys, args)
            sent += 1
        for n in range(sent):
            handle(n, replies[n])

    try:
        gate._call.call_each = capture  # type: ignore[method-assign]
        gate.check_many(requests)
        gate._call.call_each = canned  # type: ignore[method-assign]
        per_call = _best_us({"check_many": partial(gate.check_many, requests)}, calls)
    finally:
        gate._call.call_each = real  # type: ignore[method-assign]
    return Row(
        "client",
        f"Python per port, FCALLs answered in-process: gate.check_many, {ports:,} ports",
        per_call["check_many"] / ports,
        "µs",
        note=f"best of 5 loops of {calls:,} calls",
    )


def bench_client(settings: Settings, client: redis.Redis, calls: int) -> list[Row]:
    reset(settings, client)
    rows: list[Row] = []
    with Gate(settings) as gate:
        rows.append(_check_many_row(gate, max(1, calls // 1000)))
        budgets(gate, ["port-1"])
        ops, held = operations(gate, gate.redis, ["port-1"], seed=1)
        real = gate._call
        replies: dict[str, Any] = {}
        packed: dict[str, tuple[str, Sequence[Any], Sequence[Any]]] = {}

        def capture(op: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
            replies[op] = real(op, keys, args)
            packed[op] = (gate._library.functions[op], keys, args)
            return replies[op]

        def canned(op: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
            _pack(packed[op][0], keys, args)
            return replies[op]

        try:
            gate._call = capture  # type: ignore[assignment]
            for name in _OPS:
                ops[name]()
            gate._call = canned  # type: ignore[assignment]

            def reservations() -> None:  # each commit settles a reservation made here
                while len(held) < calls:
                    ops["reserve"]()

            loops = {name: ops[name] for name in _OPS}
            loops |= {f"pack {name}": partial(_pack, *packed[name]) for name in _OPS}
            best = _best_us(loops, calls, {"commit": reservations})
        finally:
            gate._call = real
        held.clear()
    for name in _OPS:
        rows.append(
            Row(
                "client",
                f"Python per call, FCALL answered in-process: {NAMES[name]}",
                best[name],
                "µs",
                note=f"best of 5 loops of {calls:,}, the operations taking turns; "
                f"{best['pack ' + name]:.2f} µs of it packing the FCALL",
            )
        )
    return rows
