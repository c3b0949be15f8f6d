"""`quota serve` as users run it: a real uvicorn with two worker processes."""

from __future__ import annotations

import gc

import httpx
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from quota import Settings
from quota.housekeeping import forget_prefix
from quota.serve import create_app
from tests.serve.conftest import BEARER, TOKENS, quota_serve


def test_quota_serve_runs_two_workers_and_stops_cleanly(served: Settings, pg: Engine) -> None:
    with quota_serve(served, workers=2) as server, httpx.Client(base_url=server.url) as http:
        put = http.put(
            "/v1/ports/p1/budget",
            json={"enabled": True, "soft_cap_tokens": 50, "hard_cap_tokens": 100},
            headers=BEARER["ops"],
        )
        assert put.status_code == 200, put.text
        # Fresh connections, which uvicorn hands to either worker (each with its own
        # gate): the counts are Redis's, exact whichever worker answered.
        for _ in range(20):
            d = httpx.post(
                f"{server.url}/v1/ports/p1/reserve",
                json={"estimated_tokens": 5, "feature": "f"},
                headers=BEARER["svc"],
            )
            assert d.status_code == 200, d.text
            rid = d.json()["reservation_id"]
            c = httpx.post(
                f"{server.url}/v1/reservations/{rid}/commit",
                json={"input_tokens": 4, "output_tokens": 0, "provider": "p", "model": "m"},
                headers=BEARER["svc"],
            )
            assert c.status_code == 200, c.text
        status = http.get("/v1/ports/p1/status", headers=BEARER["viewer"]).json()
        assert (status["used_tokens"], status["reserved_tokens"]) == (80, 0)
    assert server.proc.returncode == 0, server.log
    assert "quota serve: http://127.0.0.1:" in server.log
    assert "Traceback" not in server.log
    for t in TOKENS:
        assert t["token"] not in server.log


def test_only_the_served_app_freezes_the_heap(served: Settings, pg: Engine, r: redis.Redis) -> None:
    """`quota serve`'s workers freeze what they imported (gc.freeze); an app embedded in
    someone else's process leaves their collector alone."""
    assert gc.get_freeze_count() == 0
    try:
        with TestClient(create_app(served)) as c:
            assert c.get("/v1/health").status_code == 200
            assert gc.get_freeze_count() == 0
        with TestClient(create_app(served, freeze_heap=True)) as c:
            assert c.get("/v1/health").status_code == 200
            assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        forget_prefix(r, served.key_prefix)
