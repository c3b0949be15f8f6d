"""Changing a deployment's shard count (`quota shards change`), losing no usage.

A port's keys carry its shard's hash tag, so a new count moves most ports to other
keys. The procedure, with every gate and worker of the deployment stopped:

1. drain every shard of the old count into the ledger, until no stream holds an
   entry the ledger lacks (else stop: nothing is deleted);
2. delete every key of the old layout (budget copies, counters, holds, rate buckets,
   request-id markers, streams);
3. record the new count.

Each port is then rebuilt from the ledger by the first call that needs it (its budget
copy is missing: quota/gate.py `_refill`), in the new shard. What is lost is what only
Redis held and the ledger does not: open reservations (their holds), rate-limit
buckets (they start full) and request-id markers (a retry of a request made before the
change is counted again).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Engine

from quota._exceptions import InvalidInput, QuotaError
from quota.drain import Drainer
from quota.settings import Settings
from quota.store import Store
from quota.topology import Client

_DRAIN_SECONDS = 60.0


@dataclass
class Resharded:
    old: int
    new: int
    drained: int
    deleted: int
    seconds: float


def reshard(settings: Settings, client: Client, engine: Engine, new: int) -> Resharded:
    """Move the deployment of ``settings.key_prefix`` from its recorded shard count to
    ``new``, by the steps above (`settings.shards` is not read: the record is)."""
    if not 1 <= new <= 16384:
        raise InvalidInput(f"shards must be 1-16384, not {new}")
    started = time.monotonic()
    store = Store(engine, settings.key_prefix)
    old = store.recorded_shards(settings.shards)
    if old == new:
        raise InvalidInput(f"deployment {settings.key_prefix!r} already runs with {new} shards")
    previous = settings.model_copy(update={"shards": old})
    drainer = Drainer(previous, client, engine)
    drained = 0
    try:
        for shard in range(old):
            deadline = time.monotonic() + _DRAIN_SECONDS
            while True:
                stats = drainer.drain_shard(shard, max_seconds=5, claim_idle_ms=0)
                drained += stats.inserted
                lag = drainer.shard_lag(shard)
                if lag.pending == 0 and lag.undelivered == 0:
                    break
                if time.monotonic() > deadline:
                    raise QuotaError(
                        f"shard {shard} still has {lag.pending + lag.undelivered} undrained "
                        "events: is a gate still running? Nothing was deleted"
                    )
    finally:
        drainer.fcall.close()
    deleted = 0
    batch: list[str] = []
    for key in client.scan_iter(match=f"{settings.key_prefix}:{{q*}}:*", count=5000):
        batch.append(str(key))
        if len(batch) == 1000:
            deleted += int(client.delete(*batch))
            batch = []
    if batch:
        deleted += int(client.delete(*batch))
    store.set_shards(new)
    return Resharded(old, new, drained, deleted, time.monotonic() - started)
