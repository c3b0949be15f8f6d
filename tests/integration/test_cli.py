"""The `quota` CLI end to end against real Redis and Postgres (click's CliRunner)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine

from quota import Gate, Settings
from quota.cli import main
from tests.benchmarks.__main__ import main as bench_main
from tests.conftest import ledger_totals
from tests.servers import RedisServer


@pytest.fixture
def gate(sync_gate: Gate) -> Gate:
    """These tests are the command's, not the gates': one gate feeds them."""
    return sync_gate


@pytest.fixture
def cli(worker_env: Settings, gate: Gate) -> CliRunner:
    return CliRunner(
        env={
            "QUOTA_KEY_PREFIX": worker_env.key_prefix,
            "QUOTA_REDIS_URL": worker_env.redis_url,
            "COLUMNS": "120",
        }
    )


def run(cli: CliRunner, *args: str) -> Result:
    return cli.invoke(main, list(args), catch_exceptions=False)


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


def test_budget_set_show_history(cli: CliRunner) -> None:
    r = run(
        cli,
        "budget",
        "set",
        "acme",
        "--enable",
        "--soft",
        "800",
        "--hard",
        "1000",
        "--period",
        "day",
        "--by",
        "alice",
        "--json",
    )
    assert r.exit_code == 0
    assert as_json(r) == {
        "port_id": "acme",
        "enabled": True,
        "soft_cap_tokens": 800,
        "hard_cap_tokens": 1000,
        "period": "day",
        "outage_policy": None,
        "rate_limits": [],
        "feature_caps": {},
    }
    assert run(cli, "budget", "set", "acme", "--hard", "2000", "--by", "bob").exit_code == 0
    shown = as_json(run(cli, "budget", "show", "acme", "--json"))
    assert (shown["hard_cap_tokens"], shown["soft_cap_tokens"]) == (2000, 800)
    history = as_json(run(cli, "budget", "history", "acme", "--json"))
    assert [h["changed_by"] for h in history] == ["alice", "bob"]
    assert history[1]["before"]["hard_cap_tokens"] == 1000
    assert history[1]["after"]["hard_cap_tokens"] == 2000
    table = run(cli, "budget", "history", "acme").stdout
    assert "alice" in table
    assert "2,000" in table


def test_rate_limits_and_feature_caps_from_the_command_line(cli: CliRunner) -> None:
    r = run(cli, "budget", "set", "acme", "--enable", "--hard", "100000", "--rpm", "2",
            "--tpm", "90000", "--feature-cap", "ocr=500", "--by", "ops", "--json")  # fmt: skip
    assert r.exit_code == 0
    shown = as_json(r)
    assert [(x["requests"], x["tokens"], x["per_seconds"]) for x in shown["rate_limits"]] == [
        (2, None, 60),
        (None, 90_000, 60),
    ]
    assert shown["feature_caps"] == {"ocr": 500}
    # Merged: a limit of the same kind and window is replaced, the others kept; a cap of
    # "none" is removed.
    r = run(cli, "budget", "set", "acme", "--rate", "requests=3/60+5", "--feature-cap",
            "ocr=none", "--feature-cap", "chat=7", "--by", "ops", "--json")  # fmt: skip
    shown = as_json(r)
    assert [(x["requests"], x["burst"]) for x in shown["rate_limits"]] == [(None, None), (3, 5)]
    assert shown["feature_caps"] == {"chat": 7}
    assert "3 requests / 60 s (burst 5)" in run(cli, "budget", "show", "acme").stdout
    assert run(cli, "check", "acme", "--estimate", "10").exit_code == 0
    checked = run(cli, "check", "acme", "--estimate", "10")
    assert "Rate limits" in checked.stdout
    assert "90,000 tokens / 60 s" in checked.stdout
    usage = as_json(run(cli, "usage", "acme", "--json"))
    assert usage["feature_caps"] == [{"feature": "chat", "used_tokens": 0, "cap_tokens": 7}]
    assert {x["kind"] for x in usage["rate_limits"]} == {"requests", "tokens"}
    cleared = as_json(run(cli, "budget", "set", "acme", "--no-rate-limits", "--no-feature-caps",
                          "--by", "ops", "--json"))  # fmt: skip
    assert (cleared["rate_limits"], cleared["feature_caps"]) == ([], {})
    history = run(cli, "budget", "history", "acme").stdout
    assert "rate limits: 90,000 tokens / 60 s, 3 requests / 60 s (burst 5) -> none" in history
    assert "feature caps: chat 7 -> none" in history


def test_check_exit_codes(cli: CliRunner) -> None:
    run(cli, "budget", "set", "acme", "--enable", "--soft", "10", "--hard", "100", "--by", "u")
    allowed = run(cli, "check", "acme", "--estimate", "100")
    assert (allowed.exit_code, "allowed" in allowed.stdout) == (0, True)
    refused = run(cli, "check", "acme", "--estimate", "101", "--json")
    assert refused.exit_code == 1
    d = as_json(refused)
    assert (d["ok"], d["reason"], d["cap_tokens"], d["used_tokens"]) == (
        False,
        "estimated-exceeds-cap",
        100,
        0,
    )
    assert set(d) >= {"remaining", "soft_cap", "reserved_tokens", "enabled", "period"}


def test_record_usage_and_top(cli: CliRunner, worker_env: Settings, pg: Engine) -> None:
    run(cli, "budget", "set", "a", "--enable", "--soft", "100", "--hard", "1000", "--by", "u")
    run(cli, "budget", "set", "b", "--enable", "--soft", "100", "--hard", "1000", "--by", "u")
    args = ["--feature", "ocr", "--provider", "openai", "--model", "gpt-4o"]
    first = run(
        cli,
        "record",
        "a",
        *args,
        "--input",
        "600",
        "--output",
        "100",
        "--request-id",
        "r1",
        "--json",
    )
    assert first.exit_code == 0
    assert (as_json(first)["stored"], as_json(first)["duplicate"]) == (True, False)
    again = run(
        cli, "record", "a", *args, "--input", "600", "--output", "100", "--request-id", "r1"
    )
    assert (again.exit_code, "already counted" in again.stdout) == (0, True)
    run(cli, "record", "b", *args, "--input", "10", "--output", "0")
    run(
        cli,
        "record",
        "a",
        "--feature",
        "chat",
        "--provider",
        "p",
        "--model",
        "m",
        "--input",
        "50",
        "--output",
        "0",
    )
    assert run(cli, "drain").exit_code == 0
    assert ledger_totals(pg)["rows"] == 3
    usage = as_json(run(cli, "usage", "a", "--json"))
    assert usage["status"]["used_tokens"] == 750
    assert usage["status"]["state"] == "soft"
    assert usage["breakdown"] == [
        {"feature": "ocr", "tokens": 700, "calls": 1},
        {"feature": "chat", "tokens": 50, "calls": 1},
    ]
    text = run(cli, "usage", "a").stdout
    assert "75%" in text
    assert "ocr" in text
    top = as_json(run(cli, "top", "--json"))
    assert [s["port_id"] for s in top] == ["a", "b"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "bad port", "--estimate", "1"], "port id 'bad port' is invalid"),
        (["check", "p", "--estimate", "-1"], "must be non-negative"),
        (["check", "p", "--estimate", "lots"], "'lots' is not a valid integer"),
        (["check", "p"], "Missing option '--estimate'"),
        (["budget", "set", "p", "--soft", "9", "--hard", "5", "--by", "u"], "cannot exceed"),
        (["budget", "set", "p", "--period", "year", "--by", "u"], "'year' is not one of"),
        (["budget", "set", "p", "--soft", "5"], "Missing option '--by'"),
        (
            [
                "record",
                "p",
                "--feature",
                "f!",
                "--provider",
                "p",
                "--model",
                "m",
                "--input",
                "1",
                "--output",
                "1",
            ],
            "feature 'f!' is invalid",
        ),
        (["reconcile", "--port", "a b"], "port id 'a b' is invalid"),
        (["budget", "set", "p", "--rate", "requests=5", "--by", "u"], "give requests=N/SECONDS"),
        (
            ["budget", "set", "p", "--rate", "tokens=0/60", "--by", "u"],
            "greater than or equal to 1",
        ),
        (["budget", "set", "p", "--feature-cap", "ocr", "--by", "u"], "give FEATURE=TOKENS"),
        (["budget", "set", "p", "--rpm", "0", "--by", "u"], "0 is not in the range x>=1"),
        (["drain", "--shard", "999"], "no shard 999"),
        (["no-such-command"], "No such command"),
    ],
)
def test_bad_input_is_one_clear_line(cli: CliRunner, args: list[str], message: str) -> None:
    r = run(cli, *args)
    assert r.exit_code == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("quota: ")
    assert message in lines[0]


def test_unreachable_backend_is_one_clear_line(cli: CliRunner) -> None:
    env = {"QUOTA_REDIS_URL": "redis://127.0.0.1:1/0", "QUOTA_REDIS_TIMEOUT": "0.5"}
    r = cli.invoke(main, ["usage", "p"], env=env)
    assert r.exit_code == 2
    assert r.stderr.strip().startswith("quota: Redis failed")
    assert len(r.stderr.strip().splitlines()) == 1
    # A decision does not fail: the outage policy answers (closed by default).
    refused = cli.invoke(main, ["check", "p", "--estimate", "1"], env=env)
    assert refused.exit_code == 1
    assert "refused by the outage policy" in refused.stdout
    allowed = cli.invoke(
        main, ["check", "p", "--estimate", "1"], env={**env, "QUOTA_OUTAGE_POLICY": "open"}
    )
    assert allowed.exit_code == 0


def test_health(cli: CliRunner, gate: Gate) -> None:
    healthy = run(cli, "health", "--json")
    assert healthy.exit_code == 0, healthy.output
    report = as_json(healthy)
    assert report["healthy"] is True
    assert [c["check"] for c in report["checks"]] == ["redis", "postgres", "functions", "drain lag"]
    gate.record(port_id="p", feature="f", provider="p", model="m", input_tokens=1, output_tokens=0)
    stale = run(cli, "health", "--max-lag", "0", "--json")
    assert stale.exit_code == 1
    failed = [c for c in as_json(stale)["checks"] if not c["ok"]]
    assert [c["check"] for c in failed] == ["drain lag"]
    down = cli.invoke(main, ["health"], env={"QUOTA_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert down.exit_code == 1
    assert "FAIL" in down.stdout


def test_status_drain_and_reconcile_json(cli: CliRunner, gate: Gate) -> None:
    for i in range(5):
        gate.record(
            port_id=f"p{i}", feature="f", provider="p", model="m", input_tokens=3, output_tokens=0
        )
    lags = as_json(run(cli, "status", "--json"))
    assert sum(lag["undelivered"] for lag in lags) == 5
    assert set(lags[0]) == {"shard", "length", "pending", "undelivered", "oldest_undrained_age_s"}
    drained = as_json(run(cli, "drain", "--json"))
    assert sum(d["inserted"] for d in drained) == 5
    report = as_json(run(cli, "reconcile", "--json"))
    assert (report["ports_checked"], report["ports_drifted"]) == (5, 0)


def test_every_option_reads_a_quota_variable(cli: CliRunner) -> None:
    run(cli, "budget", "set", "acme", "--enable", "--soft", "1", "--hard", "10", "--by", "u")
    r = cli.invoke(main, ["check", "acme", "--json"], env={"QUOTA_CHECK_ESTIMATE": "11"})
    assert r.exit_code == 1
    assert as_json(r)["reason"] == "estimated-exceeds-cap"


def test_demo_and_bench_refuse_what_is_not_their_own(cli: CliRunner, settings: Settings) -> None:
    """A shell that exported a deployment's database or prefix must not get it wiped."""
    real_db = {"QUOTA_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/quota"}
    for command, own in (("demo", "quota-demo"), ("bench", "quota-bench")):
        entry = main if command == "demo" else bench_main  # ./scripts/bench runs the latter
        args = [command] if command == "demo" else []
        r = cli.invoke(entry, args, env={**real_db, "QUOTA_KEY_PREFIX": own})
        assert r.exit_code == 2
        assert f"ends in _{command}" in r.stderr
        db = {"QUOTA_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/quota_{command}"}
        r = cli.invoke(entry, args, env={**db, "QUOTA_KEY_PREFIX": "quota"})
        assert r.exit_code == 2
        assert f"ending in -{command}" in r.stderr


def test_tables_fit_80_columns(worker_env: Settings, gate: Gate, pg: Engine) -> None:
    """No line past 80 columns, nothing cut ("…"), and each table row on one line."""
    cli = CliRunner(env={"QUOTA_KEY_PREFIX": worker_env.key_prefix,
                         "QUOTA_REDIS_URL": worker_env.redis_url, "COLUMNS": "80"})  # fmt: skip
    ports = {"tenant-with-a-long-name": 9_000_000_000, "acme": 1_500_000}
    for port, hard in ports.items():
        run(cli, "budget", "set", port, "--enable", "--soft", str(hard // 2), "--hard", str(hard),
            "--rpm", "600", "--tpm", "90000000", "--feature-cap", "summarize=5000000000",
            "--by", "someone-with-a-long-name")  # fmt: skip
        run(cli, "budget", "set", port, "--hard", str(hard * 2), "--by", "bob")
        for feature in ("summarize", "classification-v2"):
            gate.record(port_id=port, feature=feature, provider="openai", model="gpt-4o-mini",
                        input_tokens=hard // 3, output_tokens=12_345)  # fmt: skip
    before_drain = run(cli, "status").stdout
    outputs = {
        "status": before_drain,
        "drain": run(cli, "drain").stdout,
        "top": run(cli, "top").stdout,
        "show": run(cli, "budget", "show", "tenant-with-a-long-name").stdout,
        "history": run(cli, "budget", "history", "tenant-with-a-long-name").stdout,
        "usage": run(cli, "usage", "tenant-with-a-long-name").stdout,
        "check": cli.invoke(main, ["check", "acme", "--estimate", "5"]).stdout,
        "health": cli.invoke(main, ["health"]).stdout,
        "help": run(cli, "--help").stdout,
    }
    for name, out in outputs.items():
        assert out.strip(), name
        widest = max(out.splitlines(), key=len)
        assert len(widest) <= 80, (name, widest)
        assert "…" not in out, (name, out)
    top = outputs["top"].splitlines()  # figures abbreviated past 99,999
    assert [line for line in top if "tenant-with-a-long-name " in line and " 6G " in line
            and " 18G " in line and "33%" in line]  # fmt: skip
    assert [line for line in top if "acme " in line and " 1.02M " in line and " 3M " in line]
    huge = "a-port-name-as-long-as-a-sentence-" + "x" * 40
    run(cli, "budget", "set", huge, "--enable", "--hard", "10", "--soft", "5", "--by", "u")
    blocks = run(cli, "top").stdout  # too long for a row: a block per port
    assert max(len(line) for line in blocks.splitlines()) <= 80
    assert f"{huge}\n  month  0 of 10  " in blocks
    assert "acme\n  month  1.02M of 3M  " in blocks
    usage = outputs["usage"].splitlines()
    assert [line for line in usage if "classification-v2" in line and "%" in line]
    assert [line for line in usage if "90,000,000 tokens / 60 s" in line]
    assert "hard cap: 9,000,000,000 -> 18,000,000,000" in outputs["history"]
    commands = outputs["help"].split("Commands:")[1]
    assert "..." not in commands  # every command's first sentence, whole
    assert "Per-shard drain lag of the shards with undrained usage: stream" in commands


def test_version(cli: CliRunner) -> None:
    from importlib.metadata import version

    assert run(cli, "--version").stdout.strip() == f"quota, version {version('quota')}"


def test_durability_risks_are_for_quota_health_not_every_command(worker_env: Settings) -> None:
    """A Gate says at start what `quota health` would (here: AOF off). The CLI's short
    commands do not repeat it on every call; `quota health` says it."""
    server = RedisServer().start()  # our own, without persistence
    try:
        env = {
            **os.environ,
            "QUOTA_KEY_PREFIX": worker_env.key_prefix,
            "QUOTA_REDIS_URL": server.url,
            "QUOTA_DATABASE_URL": worker_env.database_url,
        }

        def quota(*args: str) -> subprocess.CompletedProcess[str]:
            cmd = [sys.executable, "-m", "quota", *args]
            return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)

        set_ = quota("budget", "set", "acme", "--enable", "--soft", "1", "--hard", "2", "--by", "t")
        assert set_.returncode == 0, set_.stderr
        check = quota("check", "acme", "--estimate", "1")
        assert check.returncode == 0, check.stderr
        assert "AOF" not in set_.stderr + check.stderr
        health = quota("health")
        assert "AOF persistence is off" in health.stdout + health.stderr
    finally:
        server.cleanup()
