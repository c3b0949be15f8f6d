"""Prometheus metrics. They live in prometheus-client's default registry, so an app that
embeds the gate exposes them with its own /metrics; `quota worker --metrics-port`
serves them (gathered from every worker process) for the drain and reconcile side.

Label children are bound once here: the hot path pays an increment, not a lookup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from quota.models import Decision, UsageResult

DECISIONS = Counter("quota_decisions", "Gate calls by operation and outcome.", ["op", "outcome"])
SCRIPT_SECONDS = Histogram(
    "quota_script_seconds",
    "Round-trip time of one gate function call (FCALL), by operation.",
    ["op"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)
DRAINED = Counter("quota_drained_events", "Usage events stored in the Postgres ledger.")
DRAIN_BATCH_SECONDS = Histogram(
    "quota_drain_batch_seconds", "Time to store one drained batch in Postgres."
)
DRAIN_LAG = Gauge(
    "quota_drain_lag_seconds",
    "Age of the oldest usage event not yet in Postgres.",
    ["shard"],
    multiprocess_mode="livemax",
)
UNDRAINED = Gauge(
    "quota_undrained_events",
    "Usage events waiting in a shard's stream.",
    ["shard"],
    multiprocess_mode="livemax",
)
RECONCILE_DRIFT = Counter(
    "quota_reconcile_drift_tokens", "Tokens corrected by reconciliation (absolute)."
)
RECONCILE_DRIFTED_PORTS = Counter(
    "quota_reconcile_drifted_ports", "Ports whose counters reconciliation corrected."
)

UNREPLICATED = Counter(
    "quota_unreplicated_usage",
    "Commits and records no replica acknowledged within QUOTA_REPLICA_ACK ms.",
)
BREAKER_STATE = Gauge(
    "quota_redis_breaker_state",
    "The gate's circuit breaker to Redis: 0 closed, 1 half-open, 2 open.",
    multiprocess_mode="livemax",
)

TIMERS = {
    op: SCRIPT_SECONDS.labels(op) for op in ("check", "reserve", "commit", "release", "record")
}
TIMERS["reserve_x"] = TIMERS["reserve"]  # reserve, for a port with rate limits or caps
OUTCOMES = {
    (op, outcome): DECISIONS.labels(op, outcome)
    for op, outcome in [
        ("check", "ok"),
        ("check", "hard-cap-exceeded"),
        ("check", "estimated-exceeds-cap"),
        ("check", "unavailable"),
        ("check", "rate-limited"),
        ("check", "estimate-exceeds-rate-limit"),
        ("reserve", "ok"),
        ("reserve", "hard-cap-exceeded"),
        ("reserve", "estimated-exceeds-cap"),
        ("reserve", "unavailable"),
        ("reserve", "rate-limited"),
        ("reserve", "estimate-exceeds-rate-limit"),
        ("reserve", "feature-cap-exceeded"),
        ("commit", "counted"),
        ("commit", "duplicate"),
        ("commit", "postgres"),
        ("commit", "spool"),
        ("commit", "lost"),
        ("record", "counted"),
        ("record", "duplicate"),
        ("record", "postgres"),
        ("record", "spool"),
        ("record", "lost"),
        ("release", "released"),
        ("release", "noop"),
    ]
}


def count_decision(op: str, decision: Decision) -> Decision:
    OUTCOMES[op, decision.reason or "ok"].inc()
    return decision


def count_usage(op: str, result: UsageResult) -> UsageResult:
    if not result.stored:
        outcome = "lost"
    elif result.backend in ("postgres", "spool"):
        outcome = result.backend
    else:
        outcome = "duplicate" if result.duplicate else "counted"
    OUTCOMES[op, outcome].inc()
    return result
