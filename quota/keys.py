"""The Redis key layout. Pure.

Every key of a port, and the stream of its shard, carry the shard's hash tag
``{q<s>}``, so each script touches a single Cluster slot. Keys end with the port id
after segments of fixed shape, so the layout is injective: two different
(port, kind) pairs can never name the same key, and a port id can never reach
another port's keys (tests/unit/test_keys.py checks this with hypothesis).

    <prefix>:{q<s>}:b:<port>                      budget copy, held tokens, next lease end, alert
    <prefix>:{q<s>}:o:<port>                      open reservations: zset "<hex>:<tokens>" →
                                                  lease end
    <prefix>:{q<s>}:l:<port>                      lapsed ones (lease ended, hold returned):
                                                  zset "<hex>:<tokens>" → when forgotten
    <prefix>:{q<s>}:u:<d|w|m>:<period id>:<port>  usage: t = total, f:<feature> (hash, EXPIREAT)
    <prefix>:{q<s>}:s:<hex32>:<port>              a settled reservation: "committed" or
                                                  "released" (string, TTL)
    <prefix>:{q<s>}:i:<len(port)>:<port>:<request id>   idempotency marker (string, TTL)
    <prefix>:{q<s>}:events                        the shard's usage stream
    <prefix>:{q<s>}:epoch                         on Redis Cluster, the epoch of the primary
                                                  that owns shard s (one shard per primary)
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from quota.periods import Period, Windows

_PERIOD_LETTER: dict[Period, str] = {"day": "d", "week": "w", "month": "m"}


def shard_of(port: str, shards: int) -> int:
    """Stable across processes and versions (unlike ``hash()``)."""
    return zlib.crc32(port.encode()) % shards


@dataclass(frozen=True, slots=True)
class PortKeys:
    """A port's keys. The fixed ones are built once, with the object (the gate keeps
    one per port): a property formatting its string on each call of the hot path cost
    ~0.2 µs per key."""

    port: str
    shard: int
    tag: str  # "<prefix>:{q<s>}"
    budget: str = field(init=False)
    open: str = field(init=False)
    lapsed: str = field(init=False)
    stream: str = field(init=False)

    def __post_init__(self) -> None:
        tag, port = self.tag, self.port
        object.__setattr__(self, "budget", f"{tag}:b:{port}")  # frozen: set once, here
        object.__setattr__(self, "open", f"{tag}:o:{port}")
        object.__setattr__(self, "lapsed", f"{tag}:l:{port}")
        object.__setattr__(self, "stream", f"{tag}:events")

    def usage(self, period: Period, period_id: str) -> str:
        return f"{self.tag}:u:{_PERIOD_LETTER[period]}:{period_id}:{self.port}"

    def usage_all(self, w: Windows) -> tuple[str, str, str]:
        return (
            self.usage("day", w.day_id),
            self.usage("week", w.week_id),
            self.usage("month", w.month_id),
        )

    def settled(self, hex_id: str) -> str:
        return f"{self.tag}:s:{hex_id}:{self.port}"

    def idempotency(self, request_id: str) -> str:
        # The length prefix keeps (port "a:b", request "c") apart from (port "a", request "b:c").
        return f"{self.tag}:i:{len(self.port)}:{self.port}:{request_id}"


@dataclass(frozen=True, slots=True)
class KeyLayout:
    prefix: str
    shards: int

    def shard_tag(self, shard: int) -> str:
        return f"{self.prefix}:{{q{shard}}}"

    @property
    def epoch(self) -> str:
        """A random value the first gate writes: gone or changed means Redis lost its
        data since (quota/gate.py replays its journal then)."""
        return f"{self.prefix}:epoch"

    @property
    def recovering(self) -> str:
        """Set (with a TTL) by the gates that learn Redis lost their data: while it lives
        no port is rebuilt from the ledger, which still lacks some gates' journals."""
        return f"{self.prefix}:recovering"

    @property
    def last_reconcile(self) -> str:
        """The last full reconciliation's report (JSON, no TTL), for the dashboard."""
        return f"{self.prefix}:reconcile:last"

    def shard_epoch(self, shard: int) -> str:
        """The epoch of the Cluster primary that owns ``shard`` (each primary can lose
        its data alone): gone or changed means that primary lost its data."""
        return f"{self.shard_tag(shard)}:epoch"

    def for_port(self, port: str) -> PortKeys:
        shard = shard_of(port, self.shards)
        return PortKeys(port=port, shard=shard, tag=self.shard_tag(shard))

    def stream(self, shard: int) -> str:
        return f"{self.shard_tag(shard)}:events"
