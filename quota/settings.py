"""Configuration, read from ``QUOTA_*`` environment variables by pydantic-settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from quota._exceptions import InvalidInput
from quota.topology import is_cluster, is_sentinel, parse_cluster_url, parse_sentinel_url

_PREFIX_RE = re.compile(r"[A-Za-z0-9._-]{1,32}")
#: The longest lease allowed. Open-reservation sets outlive their last write by this
#: much, so no lease, whichever gate granted it, can outlast the set that tracks it.
MAX_LEASE_SECONDS = 7 * 86400

#: What a decision answers while Redis cannot be asked (README: failure behaviour).
OutagePolicy = Literal["closed", "open", "allowance"]
_REDIS_SCHEMES = ("redis", "rediss", "unix")
_DATABASE_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")


class Settings(BaseSettings):
    """Everything a `Gate` and the workers need to know about their environment."""

    model_config = SettingsConfigDict(env_prefix="QUOTA_", frozen=True, extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    #: RQ's Redis (the job queue, the scheduler and its lease): a standalone server, as
    #: RQ does not support Cluster. Defaults to ``redis_url`` when that is not a cluster.
    rq_redis_url: str | None = None
    database_url: str = "postgresql://postgres@127.0.0.1:5432/quota"
    #: Number of shards (hash tags and streams). Fixed for the life of a deployment; 256
    #: spreads a cluster of up to ~30 primaries evenly (README: shards on a cluster).
    shards: int = Field(default=256, ge=1, le=16384)
    #: Drain jobs `quota cron` enqueues every second; job j drains the shards s with
    #: s mod drain_jobs == j, so many shards cost no more RQ jobs (or log lines).
    drain_jobs: int = Field(default=16, ge=1, le=16384)
    #: Prefix of every Redis key; lets a demo or a test share a server without touching data.
    key_prefix: str = "quota"
    #: How long a reservation holds tokens before it expires by itself.
    lease_seconds: float = Field(default=600.0, gt=0, le=MAX_LEASE_SECONDS)
    #: How long a retried request_id is recognised (and counted once).
    idempotency_seconds: int = Field(default=2 * 86400, ge=60)
    #: How long a settled reservation is remembered, so a repeated commit/release is a no-op.
    settled_seconds: int = Field(default=3600, ge=1)
    #: A worker logs what it drained once per this many seconds (not once per job).
    worker_summary_seconds: float = Field(default=60.0, ge=0, le=86_400)
    #: Stream entries read per drain batch.
    drain_batch: int = Field(default=5000, ge=1, le=100_000)
    #: A pending entry idle this long is taken over from its (presumed crashed) consumer.
    drain_claim_idle_ms: int = Field(default=30_000, ge=0)
    #: The scheduler lease: a standby `quota cron` takes over this long after the active
    #: one dies.
    cron_lease_seconds: float = Field(default=15.0, gt=0.5, le=600)
    #: When the nightly reconciliation runs, "HH:MM" in UTC.
    reconcile_at: str = Field(default="03:15", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    #: Socket timeout for Redis calls, in seconds.
    redis_timeout: float = Field(default=2.0, gt=0, le=600, allow_inf_nan=False)
    #: Bound on every Postgres wait (connect, statement, reply), in seconds.
    database_timeout: float = Field(default=5.0, gt=0, le=600, allow_inf_nan=False)
    #: Decisions while Redis is down or hung, unless a budget says otherwise.
    outage_policy: OutagePolicy = "closed"
    #: Under the `allowance` policy: estimated tokens one process admits per port
    #: during an outage before it refuses.
    outage_allowance_tokens: int = Field(default=10_000, ge=0, le=10**12)
    #: Milliseconds each commit and record waits for one replica to acknowledge it
    #: (``WAIT 1 <ms>`` in the same write), so that a failover cannot lose usage the
    #: caller was told was counted; one no replica acknowledged in time is stored as
    #: on a timeout (Postgres, then owed to Redis). 0: do not wait (README: failover).
    replica_ack: int = Field(default=0, ge=0, le=60_000)
    #: How long a call that finds Redis unreachable tries again (a Cluster or Sentinel
    #: failover, a restart) before the outage policy decides it; 0: decide at once
    #: (quota/outage_wait.py).
    outage_wait_seconds: float = Field(default=0.0, ge=0, le=60, allow_inf_nan=False)
    #: Consecutive failed Redis calls that open the circuit breaker.
    breaker_failures: int = Field(default=5, ge=1, le=10_000)
    #: How long the breaker stays open before one call probes Redis again.
    breaker_reset_seconds: float = Field(default=1.0, gt=0, le=3600, allow_inf_nan=False)
    #: How long each gate remembers the usage Redis counted for it, to replay into the
    #: ledger if Redis loses its data before the drain stores it (0: not at all).
    journal_seconds: float = Field(default=60.0, ge=0, le=3600, allow_inf_nan=False)
    #: Where usage is spooled (fsync'd) when neither Redis nor Postgres takes it, in a
    #: folder per key prefix.
    spool_dir: Path = Path("~/.local/state/quota/spool")
    #: `quota serve`'s bearer tokens, JSON: ``[{"name", "token", "scope", "ports"?}]``
    #: (scope gate, read or admin); or the file named by ``api_tokens_file``.
    api_tokens: SecretStr | None = None
    api_tokens_file: Path | None = None

    @property
    def rq_url(self) -> str:
        """The URL of RQ's Redis (`rq_redis_url`, else `redis_url`)."""
        if self.rq_redis_url:
            return self.rq_redis_url
        if is_cluster(self.redis_url):
            raise InvalidInput(
                "RQ does not support Redis Cluster: set QUOTA_RQ_REDIS_URL to a standalone "
                "Redis for the job queue and the scheduler"
            )
        return self.redis_url

    @property
    def queue(self) -> str:
        """The RQ queue of this deployment's jobs (named after the key prefix)."""
        return self.key_prefix

    @field_validator("key_prefix")
    @classmethod
    def _prefix_charset(cls, value: str) -> str:
        # A '{' or ':' in the prefix would change the hash tag or the key grammar.
        if not _PREFIX_RE.fullmatch(value):
            raise ValueError("key_prefix must be 1-32 chars of [A-Za-z0-9._-]")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if is_cluster(value):
            parse_cluster_url(value)  # raises ValueError naming the problem
            return value
        if is_sentinel(value):
            parse_sentinel_url(value)
            return value
        return cls._redis_scheme(value)

    @field_validator("rq_redis_url")
    @classmethod
    def _rq_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if is_cluster(value):
            raise ValueError("rq_redis_url must be a standalone Redis: RQ does not support Cluster")
        if is_sentinel(value):
            parse_sentinel_url(value)
            return value
        return cls._redis_scheme(value)

    @staticmethod
    def _redis_scheme(value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in _REDIS_SCHEMES or not (parts.hostname or parts.path):
            raise ValueError(f"redis_url must be redis://host[:port][/db], not {value!r}")
        try:
            parts.port  # noqa: B018 - raises for a port that is not a number
        except ValueError:
            raise ValueError(f"redis_url has a bad port: {value!r}") from None
        return value

    @field_validator("database_url")
    @classmethod
    def _psycopg_driver(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in _DATABASE_SCHEMES:
            raise ValueError(f"database_url must be postgresql://..., not {value!r}")
        try:
            parts.port  # noqa: B018
        except ValueError:
            raise ValueError(f"database_url has a bad port: {value!r}") from None
        return sqlalchemy_url(value)

    @field_validator("spool_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()


def sqlalchemy_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and select the psycopg 3 driver."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url
