"""What INFO says about the counters' safety: eviction fails, no AOF and a nearly full
server warn."""

from __future__ import annotations

from quota.durability import redis_risks

SAFE = {"maxmemory_policy": "noeviction", "aof_enabled": 1, "maxmemory": 0, "used_memory": 10}


def test_a_safe_server_has_no_risks() -> None:
    assert redis_risks(SAFE) == ([], [])


def test_an_evicting_policy_fails() -> None:
    failures, _ = redis_risks({**SAFE, "maxmemory_policy": "allkeys-lru"})
    assert len(failures) == 1
    assert "allkeys-lru" in failures[0]


def test_no_persistence_and_a_full_server_warn() -> None:
    _, warnings = redis_risks({**SAFE, "aof_enabled": 0, "maxmemory": 100, "used_memory": 80})
    assert [w.split(" ")[0] for w in warnings] == ["AOF", "memory"]
    _, fine = redis_risks({**SAFE, "maxmemory": 100, "used_memory": 79})
    assert fine == []
