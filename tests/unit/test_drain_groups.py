"""Drain jobs split the shards between them: every shard in exactly one job."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from quota.drain import drain_group


@given(st.integers(1, 2000), st.integers(1, 300))
def test_every_shard_is_in_exactly_one_job(shards: int, jobs: int) -> None:
    groups = [list(drain_group(g, shards, jobs)) for g in range(jobs)]
    flat = sorted(s for group in groups for s in group)
    assert flat == list(range(shards))
    sizes = [len(group) for group in groups if group]
    assert len(sizes) == min(jobs, shards)
    assert max(sizes) - min(sizes) <= 1  # as even as the counts allow


def test_a_job_past_the_groups_drains_nothing() -> None:
    assert list(drain_group(5, shards=4, jobs=8)) == []
    assert list(drain_group(1, shards=256, jobs=16))[:3] == [1, 17, 33]
