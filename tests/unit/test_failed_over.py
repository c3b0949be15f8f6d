"""Which slot owner changes count as a failover (the gate then replays its journal into
the ledger): a change away from a node that failed, even after it came back."""

from __future__ import annotations

from dataclasses import dataclass, field

from quota._cluster import failed_over
from quota.breaker import Breaker


@dataclass
class Node:
    breaker: Breaker = field(default_factory=lambda: Breaker(1, 1.0, clock=lambda: 5.0))


def test_a_migration_off_a_healthy_node_is_no_failover() -> None:
    a, b = Node(), Node()
    assert failed_over([a, a, b], [a, b, b]) == set()


def test_slots_taken_from_a_node_that_is_down_are_failed_over() -> None:
    a, b = Node(), Node()
    a.breaker.failure()
    assert failed_over([a, a, b], [b, b, b]) == {0, 1}


def test_a_node_that_failed_and_came_back_still_counts() -> None:
    """A killed primary restarted from its nodes.conf serves its old slots as a primary
    until it hears of the replica that took over: what it acknowledged then is gone
    when it turns replica, so that change counts too, with its breaker closed again."""
    a, b = Node(), Node()
    a.breaker.failure()
    assert failed_over([a, b], [b, b]) == {0}  # the replica took over
    a.breaker.success()  # back, and answering
    assert failed_over([b, b], [a, b]) == set()  # a stale read names it again
    assert failed_over([a, b], [b, b]) == {0}  # it turns replica
