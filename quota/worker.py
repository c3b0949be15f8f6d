"""The RQ worker class `quota worker` runs."""

from __future__ import annotations

from rq import SimpleWorker


class Worker(SimpleWorker):
    """RQ's SimpleWorker (jobs run in the worker process: a drain job is ~ms, a fork per
    job would cost more than the job), stopping promptly on SIGTERM."""

    def unsubscribe(self) -> None:
        # RQ's pubsub thread waits up to 60 s for a message; redis-py >= 8.2 joins it in
        # stop() with no bound, so a warm shutdown could hang for a minute. RQ meant to
        # wait one second (its own join(timeout=1)); the thread is a daemon.
        thread = self.pubsub_thread
        if thread is None:
            return
        self.log.info("Worker %s: unsubscribing from %s", self.name, self.pubsub_channel_name)
        self.pubsub.unsubscribe()
        thread.stop(timeout=1)
        self.pubsub.close()
