"""record(): counting, the event stream, idempotency, soft alerts, and the fallbacks."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from sqlalchemy import Engine, text

from quota import Gate, Settings, SoftCapAlert, UsageResult
from quota.periods import from_ms, period_start
from tests.conftest import stream_entries


def rec(
    gate: Gate,
    port: str = "p",
    tokens: tuple[int, int] = (10, 5),
    request_id: str | None = None,
    user_id: str | None = None,
) -> UsageResult:
    return gate.record(
        port_id=port,
        feature="ocr",
        provider="openai",
        model="gpt-4o",
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        request_id=request_id,
        user_id=user_id,
    )


def test_record_appends_the_event_in_the_same_step(gate: Gate, r: redis.Redis) -> None:
    result = rec(gate, user_id="alice", request_id="req-1")
    entries = stream_entries(r, gate.layout.for_port("p").stream)
    assert len(entries) == 1
    entry_id, fields = entries[0]
    assert fields == {
        "id": result.event_id,
        "port": "p",
        "user": "alice",
        "feature": "ocr",
        "provider": "openai",
        "model": "gpt-4o",
        "in": "10",
        "out": "5",
        "req": "req-1",
        "at": fields["at"],
    }
    # The event time is Redis server time, which also stamps the stream entry id.
    assert abs(int(fields["at"]) - int(entry_id.split("-")[0])) <= 1
    uuid.UUID(fields["id"])


def test_same_request_id_counts_once(gate: Gate, r: redis.Redis) -> None:
    first, second = rec(gate, request_id="r1"), rec(gate, request_id="r1")
    assert (first.duplicate, second.duplicate) == (False, True)
    assert gate.current_period_tokens("p") == 15
    assert r.xlen(gate.layout.for_port("p").stream) == 1
    # Another port may use the same request id: ports never share a key.
    assert not rec(gate, port="q", request_id="r1").duplicate


def test_a_committed_request_id_is_not_recorded_again(gate: Gate) -> None:
    d = gate.reserve("p", 100, "ocr")
    assert d.reservation_id
    gate.commit(
        d.reservation_id,
        input_tokens=40,
        output_tokens=0,
        provider="a",
        model="b",
        request_id="shared",
    )
    assert rec(gate, request_id="shared").duplicate
    assert gate.current_period_tokens("p") == 40


def test_soft_cap_alert_once_per_period(gate: Gate, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[SoftCapAlert] = []
    gate.on_soft_cap = seen.append
    gate.set_budget(
        "p", enabled=True, soft_cap_tokens=20, hard_cap_tokens=100, period="week", updated_by="u"
    )
    with caplog.at_level(logging.WARNING, logger="quota"):
        flags = [rec(gate).soft_cap_alert for _ in range(4)]
    assert flags == [False, True, False, False]  # 15, 30 (crosses 20), 45, 60
    assert len(seen) == 1
    assert (seen[0].used_tokens, seen[0].soft_cap_tokens, seen[0].period) == (30, 20, "week")
    assert seen[0].period_start == period_start("week", seen[0].period_start)
    assert gate.alerts("p") == seen
    assert sum("above its soft cap" in m for m in caplog.messages) == 1


def test_a_failing_callback_does_not_fail_the_report(gate: Gate) -> None:
    def boom(alert: SoftCapAlert) -> None:
        raise RuntimeError("dashboard down")

    gate.on_soft_cap = boom
    gate.set_budget("p", enabled=True, soft_cap_tokens=1, hard_cap_tokens=100, updated_by="u")
    assert rec(gate).soft_cap_alert
    assert len(gate.alerts("p")) == 1


@pytest.mark.parametrize("request_id", [None, "req-skewed"])
def test_the_server_clock_decides_the_period(
    gate: Gate, r: redis.Redis, request_id: str | None
) -> None:
    gate._skew_ms = 3 * 86_400_000  # our clock runs three days ahead of Redis
    result = rec(gate, request_id=request_id)
    server_day = from_ms(int(r.time()[0]) * 1000)
    key = gate.layout.for_port("p").usage("day", server_day.strftime("%Y-%m-%d"))
    assert r.hget(key, "t") == "15"
    assert result.used_tokens == 15
    assert not result.duplicate  # the refused first try left no request-id marker
    assert abs(gate._skew_ms) < 60_000  # learnt the server's time
    # The first try's event was appended (its id told the time) and then removed.
    assert len(stream_entries(r, gate.layout.for_port("p").stream)) == 1


def test_commit_with_a_skewed_clock_counts_once_in_the_server_period(
    gate: Gate, r: redis.Redis
) -> None:
    gate.set_budget("p", enabled=True, soft_cap_tokens=50, hard_cap_tokens=100, updated_by="u")
    held = gate.reserve("p", 20, "ocr")
    assert held.reservation_id is not None
    gate._skew_ms = -2 * 86_400_000  # now our clock runs two days behind Redis
    result = gate.commit(
        held.reservation_id, input_tokens=7, output_tokens=3, provider="o", model="m"
    )
    assert (result.used_tokens, result.duplicate, result.lease_expired) == (10, False, False)
    assert gate.status("p").reserved_tokens == 0
    assert gate.current_period_tokens("p") == 10
    assert len(stream_entries(r, gate.layout.for_port("p").stream)) == 1


def ledger_rows(pg: Engine) -> list[tuple[object, ...]]:
    with pg.connect() as conn:
        return [
            tuple(row)
            for row in conn.execute(
                text(
                    "SELECT port_id, feature, input_tokens, output_tokens, total_tokens, "
                    "request_id, user_id, source FROM ledger ORDER BY occurred_at"
                )
            )
        ]


def test_redis_unreachable_record_falls_back_to_postgres(settings: Settings, pg: Engine) -> None:
    down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0", "redis_timeout": 0.5})
    with Gate(down) as gate:
        results = [
            rec(gate, request_id="r1", user_id="bob"),
            rec(gate, request_id="r1"),
            rec(gate, tokens=(7, 0)),
        ]
        assert [(x.stored, x.backend, x.duplicate) for x in results] == [
            (True, "postgres", False),
            (True, "postgres", True),
            (True, "postgres", False),
        ]
        assert ledger_rows(pg) == [
            ("p", "ocr", 10, 5, 15, "r1", "bob", "direct"),
            ("p", "ocr", 7, 0, 7, None, None, "direct"),
        ]


def test_both_backends_down_spools_the_event_and_replays_it(settings: Settings, pg: Engine) -> None:
    down = settings.model_copy(
        update={
            "redis_url": "redis://127.0.0.1:1/0",
            "redis_timeout": 0.5,
            "database_url": "postgresql://postgres@127.0.0.1:1/none_test",
        }
    )
    with Gate(down) as gate:
        result = rec(gate, request_id="spooled-1", user_id="carol")
        again = rec(gate, request_id="spooled-1", user_id="carol")
    assert (result.stored, result.backend) == (True, "spool")
    assert again.backend == "spool"  # not deduplicated yet: the replay will
    spool = settings.spool_dir / settings.key_prefix
    assert list(spool.glob("spool-*.jsonl"))
    assert ledger_rows(pg) == []
    # Postgres answers (Redis still down): any gate on the host replays the spool.
    with Gate(down.model_copy(update={"database_url": settings.database_url})) as back:
        deadline = time.monotonic() + 10
        while list(spool.glob("spool-*.jsonl")) and time.monotonic() < deadline:
            back.record(port_id="q", feature="f", provider="a", model="b", input_tokens=1,
                        output_tokens=0)  # fmt: skip
            time.sleep(0.2)
    assert not list(spool.glob("spool-*.jsonl"))
    rows = [row for row in ledger_rows(pg) if row[0] == "p"]
    assert rows == [("p", "ocr", 10, 5, 15, "spooled-1", "carol", "direct")]


def test_nothing_takes_the_event_so_it_is_logged_in_full(
    settings: Settings, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    (tmp_path / "not-a-dir").write_text("")
    down = settings.model_copy(
        update={
            "redis_url": "redis://127.0.0.1:1/0",
            "redis_timeout": 0.5,
            "database_url": "postgresql://postgres@127.0.0.1:1/none_test",
            "spool_dir": tmp_path / "not-a-dir",
        }
    )
    with Gate(down) as gate, caplog.at_level(logging.ERROR, logger="quota"):
        result = rec(gate, request_id="lost-1", user_id="carol")
    assert (result.stored, result.backend) == (False, "none")
    [message] = [m for m in caplog.messages if "NOT STORED" in m]
    for part in (
        '"request_id": "lost-1"',
        '"user_id": "carol"',
        '"input_tokens": 10',
        '"port_id": "p"',
        '"feature": "ocr"',
        '"occurred_at"',
        '"event_id"',
    ):
        assert part in message


@pytest.mark.standalone  # it points the gate's single-server client elsewhere
def test_commit_during_a_redis_outage_goes_to_postgres(
    settings: Settings, gate: Gate, pg: Engine, r: redis.Redis
) -> None:
    d = gate.reserve("p", 100, "vision", user_id="dan")
    with Gate(settings) as elsewhere:  # another process's: its id says feature and user
        e = elsewhere.reserve("p", 50, "chat", user_id="eve")
    assert d.reservation_id
    assert e.reservation_id
    # Same process, Redis now gone: its connections are dropped by the server, and new
    # ones go to a port where nothing listens.
    pool = cast(Any, gate.redis).connection_pool  # a single server's, sync or asyncio
    pool.connection_kwargs.update(port=1, socket_connect_timeout=0.5)
    r.client_kill_filter(_type="normal", skipme=True)
    results = [
        gate.commit(rid, input_tokens=30, output_tokens=3, provider="a", model="b")
        for rid in (d.reservation_id, e.reservation_id)
    ]
    assert [(x.stored, x.backend) for x in results] == [(True, "postgres")] * 2
    assert ledger_rows(pg) == [
        ("p", "vision", 30, 3, 33, None, "dan", "direct"),
        ("p", "chat", 30, 3, 33, None, "eve", "direct"),
    ]
