from __future__ import annotations

import multiprocessing as mp
import time
import uuid
from datetime import UTC, datetime

from quota.ids import uuid7
from quota.ledger import months_between
from quota.periods import to_ms


def test_uuid7_is_a_valid_time_ordered_uuid() -> None:
    ids = [uuid7() for _ in range(2000)]
    assert len(set(ids)) == 2000
    for text in ids[:50]:
        u = uuid.UUID(text)
        assert u.version == 7
        assert u.variant == uuid.RFC_4122
    stamps = [uuid.UUID(t).int >> 80 for t in ids]
    assert stamps == sorted(stamps)
    assert abs(stamps[-1] - time.time() * 1000) < 5000


def test_months_between_crosses_years() -> None:
    def ms(y: int, m: int, d: int) -> int:
        return to_ms(datetime(y, m, d, tzinfo=UTC))

    assert months_between(ms(2026, 11, 30), ms(2027, 2, 1)) == {
        (2026, 11),
        (2026, 12),
        (2027, 1),
        (2027, 2),
    }
    assert months_between(ms(2026, 11, 1), ms(2026, 11, 30)) == {(2026, 11)}


def test_forked_children_do_not_repeat_ids() -> None:
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        batches = pool.map(_ids, [200, 200])
    assert len(set(batches[0]) | set(batches[1])) == 400


def _ids(n: int) -> list[str]:
    return [uuid7() for _ in range(n)]
