"""The fault scenarios of ./scripts/faults, light: the invariants each must keep.

Counted from real runs (worker processes, a killed, hung or emptied redis-server, a
frozen or killed PostgreSQL of the run's own); the figures of a heavy run live in
docs/RELIABILITY.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.scenarios import LIGHT, SCENARIOS, Result, Scenario, environment, run_scenario
from tests.servers import PostgresServer

SETTLE_S = 60  # the bound: counters equal the ledger within a minute of the fault
RECOVERY_S = 5  # a killed cluster primary: calls decided normally again within 5 s


def run(scenario: Scenario, postgres: PostgresServer, spool: Path, gate: str) -> Result:
    if postgres.proc is None or postgres.proc.poll() is not None:
        postgres.start()
    with environment(postgres, scenario.persist, spool, scenario) as env:
        return run_scenario(env, scenario, LIGHT, "light", gate)


# Sentinel's failover with QUOTA_REPLICA_ACK runs heavy only (./scripts/faults): its
# WAIT path is the cluster's, asserted here, and each Sentinel run costs ~25 s.
LIGHT_SCENARIOS = [s for s in SCENARIOS if not (s.sentinel and s.replica_ack)]


# The outage-wait scenarios, one gate each to keep the suite's time (./scripts/faults
# --gate runs either): the cluster's on AsyncGate, Sentinel's on Gate.
_ONE_GATE = {"cluster-primary-killed-wait": "async", "sentinel-primary-killed-wait": "sync"}
RUNS = [(s, g) for s in LIGHT_SCENARIOS for g in ("sync", "async") if _ONE_GATE.get(s.name, g) == g]


@pytest.mark.parametrize(("scenario", "gate"), RUNS, ids=[f"{s.name}-{g}" for s, g in RUNS])
def test_scenario(scenario: Scenario, gate: str, postgres: PostgresServer, tmp_path: Path) -> None:
    """Each scenario with the workers on `Gate` (threads) and on `AsyncGate` (tasks)."""
    result = run(scenario, postgres, tmp_path / "spool", gate)
    assert result.acknowledged > 0
    assert result.raised == 0  # every call decided (by the outage policy if need be)
    assert result.twice == 0  # nothing counted twice, whichever backends saw it
    assert result.settle_s is not None
    assert result.settle_s < SETTLE_S
    # Nothing told stored=True is lost: with AOF Redis keeps it; without, the gates
    # (which outlive Redis here) replay it from their journals.
    assert result.lost == 0
    if scenario.policy == "closed":
        # No port past its hard cap through the fault; without persistence too: ports
        # are held until every gate has replayed what Redis lost into the ledger.
        assert result.past_cap == 0
    if scenario.policy == "allowance":
        allowance = 10_000  # QUOTA_OUTAGE_ALLOWANCE_TOKENS's default, per process
        assert result.worst_port <= allowance * LIGHT.processes
    if "redis" in scenario.name and scenario.policy == "closed":
        assert result.decisions["unavailable*"] > 0  # the fault (or the hold) was met
    if scenario.cluster or scenario.sentinel:
        # A replica takes over by itself, and calls find it without help.
        assert result.recovery_s < RECOVERY_S
        if scenario.outage_wait:
            # Calls wait for the promoted replica instead of being decided by policy,
            # none longer than the failover takes.
            calls = sum(result.decisions.values())
            assert result.degraded < 0.001 * calls
            assert result.slowest_s < RECOVERY_S
        if "failover" in scenario.name:
            # A planned failover: calls follow MOVED. With QUOTA_REPLICA_ACK the old
            # primary drops its clients blocked in WAIT as it turns replica, and an
            # AsyncGate's calls in flight on that connection are decided by policy.
            calls = sum(result.decisions.values())
            assert result.degraded <= (0.01 * calls if scenario.replica_ack else 0)
