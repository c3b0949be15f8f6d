"""Per-process connections for jobs, opened on first use (safe after a fork)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from sqlalchemy import Engine

from quota.drain import Drainer
from quota.reconcile import Reconciler
from quota.settings import Settings
from quota.store import Store, make_engine
from quota.topology import Client, sync_client


@dataclass
class Runtime:
    settings: Settings
    redis: Client
    engine: Engine
    drainer: Drainer
    reconciler: Reconciler

    @classmethod
    def open(cls, settings: Settings) -> Runtime:
        client = sync_client(
            settings.redis_url, decode_responses=True, socket_timeout=30, socket_connect_timeout=5
        )
        engine = make_engine(settings.database_url)
        Store(engine, settings.key_prefix).check_shards(settings.shards)
        drainer = Drainer(settings, client, engine)
        return cls(settings, client, engine, drainer, Reconciler(settings, client, engine, drainer))

    def close(self) -> None:
        self.drainer.fcall.close()
        self.redis.close()
        self.engine.dispose()


_lock = threading.Lock()
_current: tuple[int, Runtime] | None = None


def _after_fork_in_child() -> None:
    # A fork while another thread held the lock would leave the child's copy locked
    # forever; the parent's connections are not the child's to use either.
    global _lock, _current
    _lock = threading.Lock()
    _current = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def runtime() -> Runtime:
    """This process's runtime for the current ``QUOTA_*`` settings (a forked child gets
    its own, never its parent's; changed settings get new connections)."""
    global _current
    settings = Settings()
    with _lock:
        if _current is None or _current[0] != os.getpid() or _current[1].settings != settings:
            if _current is not None and _current[0] == os.getpid():
                _current[1].close()
            _current = (os.getpid(), Runtime.open(settings))
        return _current[1]


def reset() -> None:
    """Forget this process's runtime (tests switch settings between runs)."""
    global _current
    with _lock:
        if _current is not None and _current[0] == os.getpid():
            _current[1].close()
        _current = None
