"""Which reservations this process made, for commit's fallback."""

from __future__ import annotations

import threading

from quota.reservations import RecentReservations, ReservationRef, reservation_id


def ref(n: int) -> tuple[str, ReservationRef]:
    r = ReservationRef(f"{n:032x}", n + 1, "ocr", None, f"port-{n}")
    return reservation_id(*r), r


def test_an_id_comes_back_once_with_its_parts() -> None:
    recent = RecentReservations(10)
    (a, ra), (b, rb) = ref(1), ref(2)
    recent.add(a, ra)
    recent.add(b, rb)
    assert recent.pop(a) == ra
    assert recent.pop(b) == rb
    assert recent.pop(a) is None
    assert recent.pop("never") is None


def test_the_oldest_are_dropped_past_the_bound() -> None:
    recent = RecentReservations(3)
    made = [ref(i) for i in range(5)]
    for rid, r in made:
        recent.add(rid, r)
    assert [recent.pop(rid) is not None for rid, _ in made] == [False, False, True, True, True]


def test_threads_adding_at_once_keep_it_bounded() -> None:
    recent = RecentReservations(100)

    def add(t: int) -> None:
        for i in range(2000):
            rid, r = ref(t * 10_000 + i)
            recent.add(rid, r)

    threads = [threading.Thread(target=add, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kept = [recent.pop(ref(t * 10_000 + i)[0]) for t in range(8) for i in range(2000)]
    assert 90 <= sum(r is not None for r in kept) <= 100
