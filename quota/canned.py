"""An in-memory transport for `Gate`: each FCALL answered from replies given in advance,
and every call recorded. Unit tests use it to drive the gate's protocol (a clock
correction, a missing budget copy, a reply of each kind) without a server or patching
private attributes; it does no I/O.

    canned = CannedTransport({"reserve": ["-2|1767225600000", "1||0|0|||1|10|20|day"]})
    gate = Gate(settings, transport=canned)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from quota.breaker import Breaker

Reply = Any
Answer = Reply | Callable[[Sequence[Any], Sequence[Any]], Reply]


class CannedTransport:
    """Answers ``op``'s calls in order from ``replies[op]`` (a reply, or a function of
    the call's keys and args that returns one); records ``(op, keys, args)``."""

    def __init__(self, replies: Mapping[str, Iterable[Answer]], *, repeat: bool = False) -> None:
        """With ``repeat``, each op's answers come round again, and calls are not
        recorded (the client-cost benchmark's endless loops)."""
        self._replies = {op: deque(answers) for op, answers in replies.items()}
        self._repeat = repeat
        self.calls: list[tuple[str, tuple[Any, ...], tuple[Any, ...]]] = []
        self.breaker: Breaker | None = None
        self.on_missing: Callable[[], None] | None = None
        self.on_failover: Callable[..., None] | None = None  # a canned server never fails over

    def _answer(self, op: str, keys: Sequence[Any], args: Sequence[Any]) -> Reply:
        queue = self._replies.get(op)
        if not queue:
            raise AssertionError(f"no canned reply left for {op} (calls so far: {self.calls})")
        answer = queue.popleft()
        if self._repeat:
            queue.append(answer)
        else:
            self.calls.append((op, tuple(keys), tuple(args)))
        return answer(keys, args) if callable(answer) else answer

    def __call__(self, op: str, keys: Sequence[Any], args: Sequence[Any]) -> Reply:
        return self._answer(op, keys, args)

    def call_each(
        self,
        op: str,
        calls: Callable[[], Iterable[tuple[Sequence[Any], Sequence[Any]]]],
        handle: Callable[[int, Any], None],
    ) -> None:
        for n, (keys, args) in enumerate(calls()):
            handle(n, self._answer(op, keys, args))

    @property
    def open_connections(self) -> int:
        return 0

    def close(self) -> None:
        pass
