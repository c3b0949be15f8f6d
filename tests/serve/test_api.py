"""The JSON API end to end: every route does what its library call does, refusals
carry what a client backs off by, and errors are JSON with a stable code."""

from __future__ import annotations

import time

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from quota import Settings
from quota.drain import Drainer
from quota.topology import sync_client
from tests.serve.conftest import BEARER

ADMIN, SVC = BEARER["ops"], BEARER["svc"]


def budget(client: TestClient, port: str, **body: object) -> dict[str, object]:
    got = client.put(f"/v1/ports/{port}/budget", json=body, headers=ADMIN)
    assert got.status_code == 200, got.text
    return got.json()  # type: ignore[no-any-return]


def test_reserve_commit_status_breakdown(client: TestClient, served: Settings, pg: Engine) -> None:
    stored = budget(client, "p1", enabled=True, soft_cap_tokens=800, hard_cap_tokens=1000)
    assert (stored["hard_cap_tokens"], stored["enabled"]) == (1000, True)
    held = client.post(
        "/v1/ports/p1/reserve", json={"estimated_tokens": 300, "feature": "chat"}, headers=SVC
    )
    assert held.status_code == 200, held.text
    decision = held.json()
    assert decision["ok"] is True
    assert decision["reserved_tokens"] == 300
    rid = decision["reservation_id"]
    body = {"input_tokens": 200, "output_tokens": 50, "provider": "openai", "model": "m"}
    done = client.post(f"/v1/reservations/{rid}/commit", json=body, headers=SVC)
    assert done.status_code == 200, done.text
    assert (done.json()["used_tokens"], done.json()["duplicate"]) == (250, False)
    again = client.post(f"/v1/reservations/{rid}/commit", json=body, headers=SVC)
    assert again.json()["duplicate"] is True  # a retried commit counts once
    status = client.get("/v1/ports/p1/status", headers=SVC).json()
    assert (status["used_tokens"], status["reserved_tokens"], status["state"]) == (250, 0, "ok")
    recorded = client.post(
        "/v1/ports/p1/usage",
        json={
            "feature": "ocr",
            "provider": "x",
            "model": "m",
            "input_tokens": 600,
            "output_tokens": 0,
            "request_id": "req-1",
        },
        headers=SVC,
    )
    assert recorded.json()["soft_cap_alert"] is True  # 850 > the soft cap of 800
    drainer = Drainer(served, sync_client(served.redis_url, decode_responses=True), pg)
    for shard in range(served.shards):
        drainer.drain_shard(shard)
    rows = client.get("/v1/ports/p1/breakdown", headers=BEARER["viewer"]).json()
    assert sorted((f["feature"], f["tokens"], f["calls"]) for f in rows) == [
        ("chat", 250, 1),
        ("ocr", 600, 1),
    ]


def test_release_returns_the_hold(client: TestClient) -> None:
    budget(client, "p1", enabled=True, soft_cap_tokens=100, hard_cap_tokens=100)
    rid = client.post(
        "/v1/ports/p1/reserve", json={"estimated_tokens": 100, "feature": "f"}, headers=SVC
    ).json()["reservation_id"]
    assert client.post(f"/v1/reservations/{rid}/release", headers=SVC).json() == {"released": True}
    assert client.post(f"/v1/reservations/{rid}/release", headers=SVC).json() == {"released": False}
    again = client.post("/v1/ports/p1/check", json={"estimated_tokens": 100}, headers=SVC)
    assert again.status_code == 200


def test_a_refusal_is_429_with_the_decision_and_when_to_retry(client: TestClient) -> None:
    budget(client, "p1", enabled=True, soft_cap_tokens=100, hard_cap_tokens=100, period="day")
    over = client.post("/v1/ports/p1/check", json={"estimated_tokens": 101}, headers=SVC)
    assert over.status_code == 429
    assert over.json()["reason"] == "estimated-exceeds-cap"
    until_midnight = 86400 - int(time.time()) % 86400
    assert abs(int(over.headers["retry-after"]) - until_midnight) <= 2  # the period's end
    budget(client, "p2", rate_limits=[{"requests": 2, "per_seconds": 60}])
    for _ in range(2):
        ok = client.post(
            "/v1/ports/p2/reserve", json={"estimated_tokens": 1, "feature": "f"}, headers=SVC
        )
        assert ok.status_code == 200
        assert "x-ratelimit-remaining-requests" in ok.headers
    limited = client.post(
        "/v1/ports/p2/reserve", json={"estimated_tokens": 1, "feature": "f"}, headers=SVC
    )
    assert limited.status_code == 429
    assert limited.json()["reason"] == "rate-limited"
    assert limited.headers["x-ratelimit-limit-requests"] == "2"
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    # 2 a minute: the next admission is ~30 s away, to the bucket's millisecond.
    assert 25 <= int(limited.headers["retry-after"]) <= 30
    assert 25_000 < limited.json()["retry_after_ms"] <= 30_000


def test_check_many_answers_in_order(client: TestClient) -> None:
    budget(client, "p1", enabled=True, soft_cap_tokens=10, hard_cap_tokens=10)
    body = {"requests": [{"port_id": "p1", "estimated_tokens": 5},
                         {"port_id": "p2", "estimated_tokens": 50},
                         {"port_id": "p1", "estimated_tokens": 50}]}  # fmt: skip
    got = client.post("/v1/check", json=body, headers=SVC)
    assert got.status_code == 200, got.text
    assert [d["ok"] for d in got.json()["decisions"]] == [True, True, False]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "words"),
    [
        ("post", "/v1/ports/p1/check", {"estimated_tokens": -1}, 422, "invalid_input",
         "estimated_tokens"),
        ("post", "/v1/ports/p1/check", {"estimated_tokens": 1, "x": 1}, 422, "invalid_input",
         "x: Extra inputs"),
        ("post", "/v1/ports/p1/check", {}, 422, "invalid_input",
         "estimated_tokens: Field required"),
        ("post", "/v1/ports/p%20q/check", {"estimated_tokens": 1}, 422, "invalid_input",
         "port id"),
        ("post", "/v1/reservations/nope/commit",
         {"input_tokens": 1, "output_tokens": 1, "provider": "p", "model": "m"}, 404,
         "unknown_reservation", "not a reservation id"),
        ("put", "/v1/ports/p1/budget", {"soft_cap_tokens": 9, "hard_cap_tokens": 5}, 422,
         "invalid_budget", "cannot exceed"),
        ("put", "/v1/ports/p1/budget",
         {"rate_limits": [{"requests": 0, "per_seconds": 60}, {"tokens": 5}]}, 422,
         "invalid_budget", "rate_limits.1"),
        ("get", "/v1/nothing-here", None, 404, "not_found", "Not Found"),
    ],
)  # fmt: skip
def test_bad_input_is_json_with_a_stable_code_and_writes_nothing(
    client: TestClient,
    r: redis.Redis,
    served: Settings,
    method: str,
    path: str,
    body: dict[str, object] | None,
    status: int,
    code: str,
    words: str,
) -> None:
    before = client.get("/v1/ports/p1/budget", headers=ADMIN).json()
    got = client.request(method, path, json=body, headers=ADMIN)
    assert got.status_code == status, got.text
    err = got.json()["error"]
    assert err["code"] == code
    assert words in err["message"]
    assert client.get("/v1/ports/p1/budget", headers=ADMIN).json() == before
    assert not list(r.scan_iter(match=f"{served.key_prefix}:*stream*"))  # no usage written


def test_every_route_is_in_the_openapi_schema(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {
        "/v1/ports/{port}/check",
        "/v1/ports/{port}/reserve",
        "/v1/reservations/{reservation_id}/commit",
        "/v1/reservations/{reservation_id}/release",
        "/v1/ports/{port}/usage",
        "/v1/ports/{port}/status",
        "/v1/ports/{port}/breakdown",
        "/v1/ports/{port}/budget",
        "/v1/check",
        "/v1/health",
    }
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


def test_health_needs_no_token(client: TestClient) -> None:
    got = client.get("/v1/health")
    assert got.status_code == 200
    assert got.json() == {"ok": True, "redis": "ok", "database": "ok"}
