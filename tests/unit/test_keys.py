from __future__ import annotations

import string
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from quota.keys import KeyLayout, shard_of
from quota.periods import Windows

ids = st.text(alphabet=string.ascii_letters + string.digits + "._:@/-", min_size=1, max_size=40)
layout = KeyLayout("quota", 16)
windows = Windows.at(datetime(2026, 11, 25, tzinfo=UTC))


def all_keys(port: str, request_id: str) -> set[str]:
    pk = layout.for_port(port)
    return {
        pk.budget,
        pk.open,
        pk.lapsed,
        *pk.usage_all(windows),
        pk.settled("0" * 32),
        pk.idempotency(request_id),
    }


@given(ids, ids, ids, ids)
def test_distinct_ports_never_share_a_key(p1: str, p2: str, r1: str, r2: str) -> None:
    if p1 == p2:
        return
    assert not all_keys(p1, r1) & all_keys(p2, r2)


@given(ids, ids, ids)
def test_request_ids_do_not_collide_across_ports(p: str, r1: str, r2: str) -> None:
    pk = layout.for_port(p)
    if r1 != r2:
        assert pk.idempotency(r1) != pk.idempotency(r2)
    # The length prefix keeps ("a:b", "c") apart from ("a", "b:c").
    assert layout.for_port("a:b").idempotency("c") != layout.for_port("a").idempotency("b:c")


@given(ids)
def test_every_key_of_a_port_carries_its_shard_tag(port: str) -> None:
    pk = layout.for_port(port)
    tag = f"{{q{shard_of(port, 16)}}}"
    for key in (*all_keys(port, "r"), pk.stream):
        # Redis Cluster hashes the first {...}: it must be the shard tag, whatever the port.
        assert key.index("{") == len("quota:")
        assert key[len("quota:") :].startswith(tag)


def test_shard_is_stable_and_spread() -> None:
    assert shard_of("port-1", 16) == 0  # crc32: the same in every process and version
    shards = {shard_of(f"port-{i}", 16) for i in range(200)}
    assert shards == set(range(16))
