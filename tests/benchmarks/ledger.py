"""Drain throughput and lag under a fixed offered load (row 7)."""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time

import redis
from redis.typing import EncodableT, FieldT

from quota.drain import Drainer
from quota.entries import pack
from quota.ids import uuid7
from quota.keys import KeyLayout
from quota.settings import Settings
from quota.store import make_engine
from tests.benchmarks._measure import Row, reset


def _entry(port: str) -> dict[FieldT, EncodableT]:
    """A stream entry as record.lua writes it (typical OCR call sizes); its time is its id's."""
    fields = pack(
        {
            "id": uuid7(),
            "port": port,
            "user": "",
            "feature": "ocr",
            "provider": "openai",
            "model": "gpt-4o",
            "in": "1500",
            "out": "300",
            "req": "",
        }
    )
    return dict(fields.items())  # as redis-py types it


def fill_streams(
    settings: Settings, client: redis.Redis, count: int, ports: int = 1000, offset: int = 0
) -> None:
    layout = KeyLayout(settings.key_prefix, settings.shards)
    streams = [layout.for_port(f"port-{i}").stream for i in range(ports)]
    with client.pipeline(transaction=False) as pipe:
        for i in range(offset, offset + count):
            pipe.xadd(streams[i % ports], _entry(f"port-{i % ports}"))
            if i % 2000 == 1999:
                pipe.execute()
        pipe.execute()


def bench_drain(settings: Settings, client: redis.Redis, count: int, runs: int) -> list[Row]:
    """Events/s from full streams into Postgres, one drain process over every shard; the
    median of ``runs`` runs (the spread is in the note)."""
    rates = []
    for _ in range(runs):
        reset(settings, client)
        fill_streams(settings, client, count)
        engine = make_engine(settings.database_url)
        drainer = Drainer(settings, client, engine)
        start = time.perf_counter()
        for shard in range(settings.shards):
            drainer.drain_shard(shard, max_seconds=3600)
        rates.append(count / (time.perf_counter() - start))
        engine.dispose()
    return [
        Row(
            "drain",
            f"drain {count:,} queued events, 1 process",
            statistics.median(rates),
            "events/s",
            note=f"median of {runs}, range {min(rates):,.0f}-{max(rates):,.0f}; "
            f"batch {settings.drain_batch}",
        )
    ]


def bench_drain_parallel(
    settings: Settings, client: redis.Redis, count: int, processes: int = 2
) -> list[Row]:
    """The same with the shards split over ``processes`` `quota drain` processes started
    together, timed from their start (start-up included) to the last exit."""
    reset(settings, client)
    fill_streams(settings, client, count)
    groups = [range(p, settings.shards, processes) for p in range(processes)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "quota", "drain", *[f"--shard={s}" for s in group]],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for group in groups
    ]
    for p in procs:
        p.wait()
    elapsed = time.perf_counter() - start
    return [
        Row(
            "drain",
            f"drain {count:,} queued events, {processes} processes",
            count / elapsed,
            "events/s",
            note="process start-up included",
        )
    ]


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "quota", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def bench_lag(
    settings: Settings, client: redis.Redis, rate: int, seconds: float, workers: int
) -> list[Row]:
    """Oldest-undrained age while events arrive at ``rate``/s, drained by the real
    deployment: `quota cron` enqueueing per-shard drains, `quota worker` running them."""
    reset(settings, client)
    drainer = Drainer(settings, client, make_engine(settings.database_url))
    procs = [_spawn(["cron"]), _spawn(["worker", "--processes", str(workers)])]
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(max(lag.oldest_undrained_age_s or 0.0 for lag in drainer.lag()))
            time.sleep(0.2)

    try:
        time.sleep(3.0)  # let the scheduler and the workers start
        sampler = threading.Thread(target=sample)
        sampler.start()
        sent, start = 0, time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(elapsed * rate) - sent
            if due > 0:
                fill_streams(settings, client, due, offset=sent)
                sent += due
            time.sleep(0.05)
        offered = sent / (time.monotonic() - start)
        stop.set()
        sampler.join()
    finally:
        for p in procs:
            p.terminate()
            p.wait()
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return [
        Row("lag", f"offered load, drained by {workers} worker processes", offered, "events/s"),
        Row("lag", "oldest undrained event, median", statistics.median(samples), "s"),
        Row("lag", "oldest undrained event, p99", p99, "s"),
        Row("lag", "oldest undrained event, max", samples[-1], "s"),
    ]
