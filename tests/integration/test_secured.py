"""Every transport (one server, Sentinel, Cluster; both gates) with an ACL user and
TLS: private redis-servers started with ``--requirepass``, an ACL user, ``--tls-port``
and a throwaway certificate (tests/servers.py), the CA given in the URL."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from quota import Gate, Settings
from tests.gates import BlockingAsyncGate
from tests.servers import ACL_USER, ClusterServers, RedisServer, SentinelServers, Tls

pytestmark = pytest.mark.standalone  # its own servers, not the shared one nor the test cluster


@pytest.fixture(scope="module")
def tls() -> Iterator[Tls]:
    folder = tempfile.mkdtemp(prefix="quota-tls-")
    yield Tls.make(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module", params=["standalone", "sentinel", "cluster"])
def secured(request: pytest.FixtureRequest, tls: Tls) -> Iterator[tuple[str, list[RedisServer]]]:
    """The URL of a secured deployment, and its data nodes (for the harness's checks)."""
    if request.param == "standalone":
        server = RedisServer(secured=True, tls=tls).start()
        yield server.client_url(), [server]
        server.cleanup()
    elif request.param == "sentinel":
        sentinels = SentinelServers(secured=True, tls=tls).start()
        yield sentinels.url, [sentinels.primary, sentinels.replica]
        sentinels.cleanup()
    else:
        cluster = ClusterServers(secured=True, tls=tls).start()
        yield cluster.url, cluster.nodes
        cluster.cleanup()


@pytest.fixture(params=["sync", "async"])
def secured_gate(
    request: pytest.FixtureRequest,
    secured: tuple[str, list[RedisServer]],
    settings: Settings,
    pg: Engine,
) -> Iterator[Gate]:
    made = settings.model_copy(update={"redis_url": secured[0]})
    gate = Gate(made) if request.param == "sync" else BlockingAsyncGate(made)
    with gate as g:
        yield g  # type: ignore[misc]


def test_every_call_as_the_acl_user_over_tls(
    secured_gate: Gate, secured: tuple[str, list[RedisServer]]
) -> None:
    gate = secured_gate
    url, nodes = secured
    assert url.startswith("rediss")
    assert "ssl_ca_certs=" in url
    gate.set_budget("p", enabled=True, soft_cap_tokens=500, hard_cap_tokens=1000, updated_by="t")
    d = gate.reserve("p", 100, "chat")
    assert (d.ok, d.degraded) == (True, False)
    r = gate.commit(
        d.reservation_id or "", input_tokens=60, output_tokens=20, provider="x", model="m"
    )
    assert (r.stored, r.backend) == (True, "redis")
    gate.record(
        port_id="p", feature="ocr", provider="x", model="m", input_tokens=5, output_tokens=5
    )
    gate.release(gate.reserve("p", 10, "chat").reservation_id or "")
    assert [x.used_tokens for x in gate.check_many([("p", 1), ("q", 1)])] == [90, 0]
    assert gate.status("p").used_tokens == 90
    users = set()
    for node in nodes:  # the gate's connections: the ACL user's, on the TLS port
        with node.client() as c:
            users |= {
                x["user"] for x in c.client_list() if x["laddr"].endswith(f":{node.tls_port}")
            }
    assert ACL_USER in users


def test_without_the_acl_password_the_gate_decides_by_its_policy(
    secured: tuple[str, list[RedisServer]], settings: Settings, pg: Engine
) -> None:
    url = secured[0].replace("quota-secret", "wrong")
    with Gate(settings.model_copy(update={"redis_url": url, "redis_timeout": 1.0})) as gate:
        d = gate.check("p", 1)
    assert (d.ok, d.degraded, d.reason) == (False, True, "unavailable")  # closed: refused


def test_without_the_ca_tls_is_refused(
    secured: tuple[str, list[RedisServer]], settings: Settings, pg: Engine, tmp_path: Path
) -> None:
    other = Tls.make(str(tmp_path))  # a CA that did not sign the servers' certificate
    url = secured[0].split("ssl_ca_certs=")[0] + f"ssl_ca_certs={other.ca}"
    with Gate(settings.model_copy(update={"redis_url": url, "redis_timeout": 0.3})) as gate:
        d = gate.check("p", 1)
    assert (d.ok, d.degraded) == (False, True)
