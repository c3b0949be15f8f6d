"""`AsyncGate` driven from synchronous test code, so that one behavioural suite runs
against both gates (the `gate` fixture's two params): each call runs on the async
gate's own event loop, in a thread of its own, and blocks until it is done."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from quota import AsyncGate, AsyncReservation, Settings, UsageResult

T = TypeVar("T")


class BlockingAsyncGate:
    """`Gate`'s surface over an `AsyncGate`; other attributes are the async gate's."""

    def __init__(self, settings: Settings) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.gate: AsyncGate = self.run(self._make(settings))

    @staticmethod
    async def _make(settings: Settings) -> AsyncGate:
        return AsyncGate(settings)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("_loop", "_thread", "gate"):
            object.__setattr__(self, name, value)
        else:  # a test's setting (a hook, a clock skew) is the async gate's
            setattr(self.gate, name, value)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.gate, name)
        if inspect.iscoroutinefunction(attr):
            method: Callable[..., Coroutine[Any, Any, Any]] = attr
            return lambda *a, **k: self.run(method(*a, **k))
        return attr

    @contextmanager
    def reservation(self, *args: Any, **kwargs: Any) -> Iterator[BlockingReservation]:
        cm = self.gate.reservation(*args, **kwargs)
        held = self.run(cm.__aenter__())
        try:
            yield BlockingReservation(self, held)
        except BaseException as exc:
            if not self.run(cm.__aexit__(type(exc), exc, exc.__traceback__)):
                raise
        else:
            self.run(cm.__aexit__(None, None, None))

    def close(self) -> None:
        self.run(self.gate.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> BlockingAsyncGate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlockingReservation:
    def __init__(self, owner: BlockingAsyncGate, held: AsyncReservation) -> None:
        self._owner, self._held = owner, held
        self.decision = held.decision

    @property
    def reservation_id(self) -> str:
        return self._held.reservation_id

    @property
    def result(self) -> UsageResult | None:
        return self._held.result

    def commit(self, **kwargs: Any) -> UsageResult:
        return self._owner.run(self._held.commit(**kwargs))
