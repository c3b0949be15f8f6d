"""The gate on a Redis Cluster beside one Redis server, in the same run: a private
redis-server, a private cluster of 3 primaries and 3 replicas, and one of 3 primaries
alone, and one redis-server with a replica (tests/servers.py), all on this machine, so
the ratios say what the cluster costs here (the transport; the replicas' replication,
on the same cores), not how a cluster scales. 4 processes × 4 threads do
reserve+commit pairs on 1,000 ports, rounds alternating between them; check_many asks
1,000 ports per call, which the cluster transport splits across the primaries and
sends together."""

from __future__ import annotations

import multiprocessing as mp
import random
import threading
import time
from collections import Counter
from multiprocessing.synchronize import Barrier
from typing import Any

from quota import Gate
from quota.settings import Settings
from tests.benchmarks._measure import Row, fmt
from tests.servers import ClusterServers, RedisServer

PROCESSES, THREADS, PORTS = 4, 4, 1000
BACKENDS = ("one server", "cluster", "cluster, no replicas", "one server + replica")


def _budgets(settings: Settings, ports: list[str]) -> None:
    with Gate(settings) as gate:
        for port in ports:
            gate.set_budget(
                port, enabled=True, soft_cap_tokens=10**12, hard_cap_tokens=10**12, updated_by="b"
            )
            gate.check(port, 1)  # the budget copy in Redis before the clock starts


def _in_sync(replica: RedisServer) -> None:
    deadline = time.monotonic() + 30
    with replica.client() as c:
        while c.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not sync with its primary in 30 s")
            time.sleep(0.1)


def _worker(
    urls: dict[str, str],
    settings: Settings,
    ports: list[str],
    seconds: float,
    rounds: int,
    barrier: Barrier,
    out: mp.Queue[Any],
) -> None:
    gates = {b: Gate(settings.model_copy(update={"redis_url": urls[b]})) for b in BACKENDS}
    done: dict[str, list[int]] = {b: [] for b in BACKENDS}
    for _ in range(rounds):
        for backend in BACKENDS:
            gate, counts = gates[backend], [0] * THREADS

            def run(i: int, gate: Gate = gate, counts: list[int] = counts) -> None:
                rng = random.Random(i)
                deadline = time.monotonic() + seconds
                n = 0
                while time.monotonic() < deadline:
                    d = gate.reserve(rng.choice(ports), 100, "chat")
                    gate.commit(
                        d.reservation_id or "", input_tokens=60, output_tokens=30,
                        provider="p", model="m",
                    )  # fmt: skip
                    n += 2
                counts[i] = n

            barrier.wait()
            threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            done[backend].append(sum(counts))
    for gate in gates.values():
        gate.close()
    out.put(done)


def _fcalls(cluster: ClusterServers) -> int:
    total = 0
    for node in cluster.primaries():
        with node.client() as c:
            stats = c.info("commandstats")
        total += sum(
            int(stats.get(k, {}).get("calls", 0)) for k in ("cmdstat_fcall", "cmdstat_fcall_ro")
        )
    return total


def _check_many(
    settings: Settings, urls: dict[str, str], ports: list[str], batches: int
) -> dict[str, float]:
    gates = {b: Gate(settings.model_copy(update={"redis_url": urls[b]})) for b in urls}
    asked = [(p, 100) for p in ports]
    rates: dict[str, list[float]] = {b: [] for b in urls}
    for _ in range(3):
        for backend, gate in gates.items():
            gate.check_many(asked)  # warm
            started = time.perf_counter()
            for _ in range(batches):
                gate.check_many(asked)
            rates[backend].append(batches * len(asked) / (time.perf_counter() - started))
    for gate in gates.values():
        gate.close()
    return {b: sorted(r)[1] for b, r in rates.items()}


def bench_cluster(settings: Settings, seconds: float, rounds: int, batches: int) -> list[Row]:
    server = RedisServer().start()
    cluster = ClusterServers().start()
    bare = ClusterServers(replicas=0).start()
    # One server with a replica: the cluster's replication on the same cores, without Cluster.
    followed = RedisServer().start()
    follower = RedisServer(extra=["--replicaof", "127.0.0.1", str(followed.port)]).start()
    try:
        _in_sync(follower)
        urls = {
            "one server": server.url,
            "cluster": cluster.url,
            "cluster, no replicas": bare.url,
            "one server + replica": followed.url,
        }
        ports = [f"tenant-{i}" for i in range(PORTS)]
        for url in urls.values():
            _budgets(settings.model_copy(update={"redis_url": url}), ports)
        for node in cluster.primaries():
            with node.client() as c:
                c.config_resetstat()
        ctx = mp.get_context("fork")
        barrier = ctx.Barrier(PROCESSES)
        out: mp.Queue[Any] = ctx.Queue()
        procs = [
            ctx.Process(target=_worker, args=(urls, settings, ports, seconds, rounds, barrier, out))
            for _ in range(PROCESSES)
        ]
        for p in procs:
            p.start()
        parts = [out.get(timeout=600) for _ in procs]
        for p in procs:
            p.join()
        per_round: dict[str, list[float]] = {
            b: [sum(part[b][i] for part in parts) / seconds for i in range(rounds)]
            for b in BACKENDS
        }
        calls = sum(sum(part["cluster"]) for part in parts)
        fcalls = _fcalls(cluster)
        ratios = {
            b: sorted(c / s for s, c in zip(per_round["one server"], per_round[b], strict=True))
            for b in BACKENDS[1:]
        }
        medians = {b: sorted(v)[len(v) // 2] for b, v in per_round.items()}
        replicated = per_round["one server + replica"]
        paired = {
            "cluster": sorted(c / s for s, c in zip(replicated, per_round["cluster"], strict=True))
        }
        many = _check_many(settings, {b: urls[b] for b in BACKENDS[:2]}, ports, batches)
        spread = Counter(
            cluster.owner(f"{settings.key_prefix}:{{q{s}}}:events").port
            for s in range(settings.shards)
        )
    finally:
        follower.cleanup()
        followed.cleanup()
        bare.cleanup()
        cluster.cleanup()
        server.cleanup()
    note = (
        f"{PROCESSES} processes x {THREADS} threads, reserve+commit; median of {rounds} "
        "interleaved rounds"
    )
    base = Row(
        "cluster", "reserve+commit, one redis-server", medians["one server"], "calls/s", note=note
    )
    return [
        base,
        *(
            Row(
                "cluster",
                f"reserve+commit, {what}",
                medians[b],
                "calls/s",
                ratio=ratios[b][len(ratios[b]) // 2],
                note=note + "; ratio: median of the rounds' paired ratios "
                f"({fmt(ratios[b][0])}-{fmt(ratios[b][-1])})",
            )
            for b, what in (
                ("cluster", "cluster of 3 primaries + 3 replicas"),
                ("cluster, no replicas", "cluster of 3 primaries, no replicas"),
                ("one server + replica", "one redis-server and its replica"),
            )
        ),
        Row(
            "cluster",
            "reserve+commit, 3 primaries + 3 replicas against one server and its replica",
            medians["cluster"],
            "calls/s",
            ratio=paired["cluster"][len(paired["cluster"]) // 2],
            note="both replicated on the same cores; ratio: median of the rounds' paired "
            f"ratios ({fmt(paired['cluster'][0])}-{fmt(paired['cluster'][-1])})",
        ),
        Row(
            "cluster",
            "FCALLs per call on the cluster",
            fcalls / max(calls, 1),
            "FCALLs",
            note=f"{fmt(fcalls)} FCALLs on the primaries (INFO commandstats) "
            f"for {fmt(calls)} calls",
        ),
        Row(
            "cluster",
            "check_many, 1,000 ports per call, one redis-server",
            many["one server"],
            "decisions/s",
        ),
        Row(
            "cluster",
            "check_many, 1,000 ports per call, across 3 primaries",
            many["cluster"],
            "decisions/s",
            ratio=many["cluster"] / many["one server"],
            note=f"{settings.shards} shards on the primaries: "
            + ", ".join(str(n) for n in sorted(spread.values(), reverse=True)),
        ),
    ]
