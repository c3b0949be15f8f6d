"""The dashboard's pages from real data: a sync gate writes budgets and usage, the
drain and a reconciliation run, and the pages show them; who may see them; and that
showing them writes nothing and never reads the ledger itself."""

from __future__ import annotations

import re
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event
from starlette.routing import Mount

from quota import Gate, Settings
from quota.drain import Drainer
from quota.reconcile import Reconciler
from quota.topology import sync_client
from tests.conftest import pg_counts, snapshot
from tests.serve.conftest import BEARER, TOKENS
from tests.serve.test_auth import flat

VIEWER = BEARER["viewer"]


@pytest.fixture
def data(served: Settings, pg: Engine) -> None:
    """p-hard at its hard cap, p-soft over its soft cap, p-ok well under; usage in the
    ledger (drained) and a full reconciliation's report kept."""
    with Gate(served) as gate:
        caps = {"p-hard": (50, 100), "p-soft": (100, 1000), "p-ok": (5000, 10000)}
        for port, (soft, hard) in caps.items():
            gate.set_budget(port, enabled=True, soft_cap_tokens=soft, hard_cap_tokens=hard,
                            updated_by="alice")  # fmt: skip
        gate.set_budget("p-soft", hard_cap_tokens=2000, updated_by="bob")
        usage = {"p-hard": 100, "p-soft": 300, "p-ok": 10}
        for port, tokens in usage.items():
            for feature, model, share in (("chat", "gpt-4o", 0.7), ("ocr", "gpt-4o-mini", 0.3)):
                gate.record(port_id=port, feature=feature, provider="openai", model=model,
                            input_tokens=round(tokens * share), output_tokens=0)  # fmt: skip
        gate.reserve("p-ok", 40, "chat")  # an open hold
    client = sync_client(served.redis_url, decode_responses=True)
    drainer = Drainer(served, client, pg)
    for shard in range(served.shards):
        drainer.drain_shard(shard)
    Reconciler(served, client, pg, drainer).run()


def test_overview_ranks_ports_and_shows_the_deployment(client: TestClient, data: None) -> None:
    got = client.get("/", headers=VIEWER)
    assert got.status_code == 200, got.text
    html = got.text
    rows = re.findall(r'<tr data-port="([^"]+)" data-state="([^"]+)">', html)
    assert rows == [("p-hard", "hard"), ("p-soft", "soft"), ("p-ok", "ok")]
    assert re.search(r'id="card-soft">.*?<div class="value">1</div>', html, re.S)
    assert re.search(r'id="card-hard">.*?<div class="value">1</div>', html, re.S)
    assert re.search(r'id="card-holds">.*?<div class="value">40</div>', html, re.S)
    reconciled = r'id="card-reconcile">.*?0</div><div class="note">tokens corrected on 0 of 3 ports'
    assert re.search(reconciled, html, re.S)
    assert 'class="badge closed">closed</span>' in html  # the breaker
    assert "are up to date (nothing undrained)" in html  # the data's age, in the footer
    assert "None in the last 7 days." in html


def test_refusals_through_the_api_are_tallied_by_reason(client: TestClient, data: None) -> None:
    svc = BEARER["svc"]
    for _ in range(3):
        refused = client.post("/v1/ports/p-hard/check", json={"estimated_tokens": 1}, headers=svc)
        assert refused.status_code == 429
    many = {"requests": [{"port_id": "p-ok", "estimated_tokens": 10**6},
                         {"port_id": "p-ok", "estimated_tokens": 1}]}  # fmt: skip
    client.post("/v1/check", json=many, headers=svc)
    html = client.get("/", headers=VIEWER).text  # the dashboard's own reads are not counted
    table = re.search(r'<table id="refusals">.*?</table>', html, re.S)
    assert table is not None
    assert re.findall(r'<td>([\w-]+)</td><td class="num">(\d+)</td><td class="num">(\d+)</td>',
                      table[0]) == [("estimated-exceeds-cap", "1", "1"),
                                    ("hard-cap-exceeded", "3", "3")]  # fmt: skip


def test_port_page_shows_usage_breakdowns_history_and_the_soft_warning(
    client: TestClient, data: None
) -> None:
    html = client.get("/ports/p-soft", headers=VIEWER).text
    assert 'id="state">soft</span>' in html
    assert re.search(r'id="warning">Over its soft cap of 100 tokens \(15% of the hard cap\)', html)
    assert "300 tokens used and 0 held" in html
    features = re.search(r'<table id="features">.*?</table>', html, re.S)
    assert features is not None
    assert re.findall(r"<td>(\w+)</td><td class=\"num\">([\d,]+)</td>", features[0]) == [
        ("chat", "210"),
        ("ocr", "90"),
    ]
    assert '<td>openai</td><td>gpt-4o</td><td class="num">210</td>' in html
    assert "hard_cap_tokens 1,000 → 2,000" in html  # bob's change, newest first
    assert html.index("bob") < html.index("alice")
    chart = re.search(r"data-chart='([^']+)'", html)
    assert chart is not None
    assert chart[1].endswith("300]}")  # today's bar: the day's tokens
    assert '<script src="/static/uplot/uPlot.iife.min.js"></script>' in html
    assert client.get("/static/uplot/uPlot.iife.min.js").status_code == 200
    ok = client.get("/ports/p-ok", headers=VIEWER).text
    assert 'id="warning"' not in ok
    assert "10 tokens used and 40 held" in ok


def test_reconcile_page_and_unknown_ports(client: TestClient, data: None) -> None:
    html = client.get("/reconcile", headers=VIEWER).text
    assert "None: every counter equalled the ledger." in html
    assert client.get("/ports/no%20such", headers=VIEWER).status_code == 404


def test_who_may_see_the_dashboard(client: TestClient) -> None:
    anonymous = client.get("/ports/p1")
    assert anonymous.status_code == 401
    assert '<form class="login" method="post" action="/login">' in anonymous.text
    assert 'name="next" value="/ports/p1"' in anonymous.text
    assert (
        client.get("/", headers={"Authorization": "Bearer wrong-token-000000"}).status_code == 401
    )
    assert client.get("/", headers=BEARER["svc"]).status_code == 403  # a gate token
    refused = client.post("/login", data={"token": TOKENS[2]["token"], "next": "/"})
    assert refused.status_code == 403
    wrong = client.post("/login", data={"token": "nope", "next": "/"})
    assert wrong.status_code == 401
    assert "unknown token" in wrong.text


def test_login_sets_a_strict_httponly_cookie_that_carries_no_secret(
    client: TestClient, data: None
) -> None:
    logged = client.post(
        "/login", data={"token": TOKENS[1]["token"], "next": "/reconcile"}, follow_redirects=False
    )
    assert logged.status_code == 303
    assert logged.headers["location"] == "/reconcile"
    cookie = logged.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert TOKENS[1]["token"] not in cookie
    value = client.cookies["quota_session"]
    assert client.get("/").status_code == 200  # the cookie alone
    name, expiry, mac = value.split(".")
    client.cookies.clear()
    client.cookies.set("quota_session", f"{name}.{int(expiry) + 3600}.{mac}")  # extended
    assert client.get("/").status_code == 401
    client.cookies.clear()
    client.post("/login", data={"token": TOKENS[1]["token"]})
    assert client.get("/").status_code == 200
    client.post("/logout")  # the server clears its cookie
    assert client.get("/").status_code == 401
    away = client.post(
        "/login", data={"token": TOKENS[0]["token"], "next": "//evil.example/"},
        follow_redirects=False,
    )  # fmt: skip
    assert away.headers["location"] == "/"  # no open redirect


def test_the_dashboard_has_no_write_routes(client: TestClient) -> None:
    for route in flat(client.app.routes):  # type: ignore[attr-defined]
        path = getattr(route, "path", "")
        if path.startswith("/v1") or isinstance(route, Mount):
            continue
        methods = getattr(route, "methods", None) or {"GET"}
        if path in ("/login", "/logout"):  # a session cookie, set or cleared: no data
            continue
        assert methods <= {"GET", "HEAD"}, (path, methods)


def test_showing_pages_writes_nothing_and_never_reads_the_ledger(
    client: TestClient, data: None, r: redis.Redis, served: Settings, pg: Engine
) -> None:
    pages = ["/", "/ports/p-hard", "/ports/p-soft", "/ports/p-ok", "/reconcile"]
    for url in pages:  # the first showing may load budget copies into Redis
        assert client.get(url, headers=VIEWER).status_code == 200
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engine = client.app.state.gate.db.engine.sync_engine  # type: ignore[attr-defined]
    event.listen(engine, "before_cursor_execute", seen)
    try:
        before = (snapshot(r, served.key_prefix), pg_counts(pg))
        for url in pages:
            assert client.get(url, headers=VIEWER).status_code == 200
        assert (snapshot(r, served.key_prefix), pg_counts(pg)) == before
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert statements  # pages read Postgres: budgets, rollups, history, alerts...
    assert not [s for s in statements if re.search(r"\bledger\b(?!_)", s)]  # ...not the ledger
