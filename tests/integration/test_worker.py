"""The RQ worker class `quota worker` runs."""

from __future__ import annotations

import threading
import time

import redis
from rq import SimpleWorker

from quota.settings import Settings
from quota.worker import Worker


def _unsubscribe_seconds(worker: SimpleWorker) -> float:
    """How long a warm shutdown's unsubscribe takes when RQ's pubsub thread has already
    read its last message (the ordering that held `quota worker` up under load)."""
    worker.subscribe()  # type: ignore[no-untyped-call]
    assert worker.pubsub_thread is not None
    worker.pubsub.unsubscribe()
    deadline = time.monotonic() + 5
    while worker.pubsub.subscribed and time.monotonic() < deadline:
        time.sleep(0.01)  # the thread reads the reply, then waits up to 60 s for more
    assert not worker.pubsub.subscribed
    done = threading.Event()
    started = time.monotonic()
    threading.Thread(target=lambda: (worker.unsubscribe(), done.set()), daemon=True).start()
    done.wait(20)
    return time.monotonic() - started


def test_a_warm_shutdown_does_not_wait_for_the_pubsub_thread(worker_env: Settings) -> None:
    conn = redis.Redis.from_url(worker_env.rq_url)
    worker = Worker([worker_env.queue], connection=conn)
    assert _unsubscribe_seconds(worker) < 5  # RQ's own class: 60 s
