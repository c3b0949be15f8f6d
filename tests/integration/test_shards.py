"""The shard count a deployment runs with: recorded by its first process, refused when
another process disagrees, and changed by `quota shards change` without losing usage."""

from __future__ import annotations

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import Engine

from quota import Gate, Settings
from quota._exceptions import ShardMismatch
from quota.cli import main
from quota.drain import Drainer
from quota.topology import sync_client

pytestmark = pytest.mark.standalone  # the procedure itself is the same on a cluster


def test_a_process_with_another_shard_count_is_refused(settings: Settings, pg: Engine) -> None:
    with Gate(settings):
        pass  # the first process records its count
    with pytest.raises(ShardMismatch, match=f"set QUOTA_SHARDS={settings.shards}"):
        Gate(settings.model_copy(update={"shards": settings.shards * 2}))


def test_changing_the_shard_count_keeps_every_ports_usage(
    worker_env: Settings, pg: Engine, r: redis.Redis
) -> None:
    settings = worker_env
    ports = [f"port-{i}" for i in range(24)]
    with Gate(settings) as gate:
        for n, port in enumerate(ports):
            gate.set_budget(
                port, enabled=True, soft_cap_tokens=10**6, hard_cap_tokens=10**6, updated_by="t"
            )
            gate.record(
                port_id=port,
                feature="f",
                provider="x",
                model="m",
                input_tokens=100 + n,
                output_tokens=0,
            )
        drainer = Drainer(settings, sync_client(settings.redis_url, decode_responses=True), pg)
        for shard in range(0, settings.shards, 2):  # half the shards drained; the rest wait
            drainer.drain_shard(shard, max_seconds=5)
        held = gate.reserve(ports[0], 50, "f")
        assert held.ok
    cli = CliRunner(
        env={"QUOTA_KEY_PREFIX": settings.key_prefix, "QUOTA_REDIS_URL": settings.redis_url}
    )
    refused = cli.invoke(main, ["shards", "change", "32"])
    assert refused.exit_code == 2
    assert "--yes" in refused.output
    done = cli.invoke(main, ["shards", "change", "32", "--yes", "--json"], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    assert '"new": 32' in done.output
    assert not list(r.scan_iter(match=f"{settings.key_prefix}:{{q*}}:*"))  # the old layout gone
    with pytest.raises(ShardMismatch):
        Gate(settings)  # still the old count: refused now
    with Gate(settings.model_copy(update={"shards": 32})) as moved:
        for n, port in enumerate(ports):
            d = moved.check(port, 1)  # the budget copy is missing: rebuilt from the ledger
            assert (d.ok, d.degraded, d.used_tokens) == (True, False, 100 + n), port
        assert moved.check(ports[0], 1).reserved_tokens == 0  # holds are not kept
    show = cli.invoke(main, ["shards", "show", "--json"], env={"QUOTA_SHARDS": "32"})
    assert '"recorded": 32' in show.output


def test_adopt_records_a_count_and_moves_nothing(settings: Settings, pg: Engine) -> None:
    with Gate(settings) as gate:
        gate.set_budget("p", enabled=True, soft_cap_tokens=90, hard_cap_tokens=100, updated_by="t")
    env = {"QUOTA_KEY_PREFIX": settings.key_prefix, "QUOTA_REDIS_URL": settings.redis_url}
    cli = CliRunner(env=env)
    assert cli.invoke(main, ["shards", "adopt", "8"]).exit_code == 2  # --yes missing
    done = cli.invoke(main, ["shards", "adopt", "8", "--yes", "--json"], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    assert '"old": ' + str(settings.shards) in done.output
    assert '"new": 8' in done.output
    with pytest.raises(ShardMismatch, match="set QUOTA_SHARDS=8"):
        Gate(settings)
    with Gate(settings.model_copy(update={"shards": 8})):
        pass  # the recorded count is the one adopted; no key was touched for it
