"""The metrics endpoint of `quota worker --metrics-port`, in a process of its own.

It is started with "spawn", not "fork", and the worker pool's own process keeps no
threads: RQ forks worker processes at any time (it respawns dead ones), and a fork
while another thread held a lock (prometheus-client's, a connection pool's) would
leave that lock held forever in the child.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time

from quota._exceptions import QuotaError
from quota.settings import Settings

log = logging.getLogger("quota.metrics")

SAMPLE_SECONDS = 5.0


def serve(port: int, parent: int) -> None:
    """Serve every worker process's metrics, and sample the drain lag, until the
    parent process is gone."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    from quota.runtime import Runtime

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # unannotated upstream
    start_http_server(port, registry=registry)
    rt = Runtime.open(Settings())
    while os.getppid() == parent:
        try:
            rt.drainer.lag()  # sets the lag and backlog gauges
        except QuotaError as exc:
            log.warning("drain lag not sampled: %s", exc)
        time.sleep(SAMPLE_SECONDS)


def start(port: int) -> multiprocessing.process.BaseProcess:
    process = multiprocessing.get_context("spawn").Process(
        target=serve, args=(port, os.getpid()), name="quota-metrics", daemon=True
    )
    process.start()
    return process
