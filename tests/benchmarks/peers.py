"""What users would otherwise use: the `limits` library on the same Redis (row 5), and
the seed's check, a Postgres SUM over the ledger, at growing ledger sizes (row 6)."""

from __future__ import annotations

from datetime import UTC, datetime

import redis
from limits import RateLimitItemPerDay
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from sqlalchemy import text

from quota.gate import Gate
from quota.periods import period_start
from quota.settings import Settings
from quota.store import make_engine
from tests.benchmarks._measure import Row, interleaved, paired_ratio, reset, timed_row
from tests.benchmarks.hotpath import budgets, operations


def bench_limits(settings: Settings, client: redis.Redis, calls: int) -> list[Row]:
    """A decision with cost from `limits` (1 counter, one window) against gate.reserve
    (hard cap with holds, three periods, per-feature counters, a ledger event on commit)
    and gate.check, all on the same Redis in the same run, in interleaved rounds (as the
    sequential rows) so that a slow patch of the machine hits all of them alike."""
    reset(settings, client)
    # Under the bench prefix, so that reset() and the tests clean its keys up too.
    storage = RedisStorage(settings.redis_url, key_prefix=f"{settings.key_prefix}:limits")
    item = RateLimitItemPerDay(10**12)
    fixed, moving = FixedWindowRateLimiter(storage), MovingWindowRateLimiter(storage)
    with Gate(settings) as gate:
        budgets(gate, ["port-1"])
        t = interleaved(
            {
                "fixed": lambda: fixed.hit(item, "fixed-port", cost=1500),
                "moving": lambda: moving.hit(item, "moving-port", cost=15),
                "check": lambda: gate.check("port-1", 1500),
                "reserve": lambda: gate.reserve("port-1", 1500, "ocr"),
            },
            calls,
        )

    def row(name: str, label: str, note: str = "") -> Row:
        return Row(
            "peers", label, t[name].per_second, "calls/s", t[name].p50_us, t[name].p99_us, note=note
        )

    fixed_row = row("fixed", "limits FixedWindow hit(cost=1500)")
    return [
        fixed_row,
        row(
            "moving",
            "limits MovingWindow hit(cost=15)",
            "cost 15: the moving window stores one entry per unit of cost",
        ),
        row("check", "gate.check (same run)").against(
            fixed_row, paired_ratio(t["check"].rounds, t["fixed"].rounds)
        ),
        row("reserve", "gate.reserve (same run)").against(
            fixed_row, paired_ratio(t["reserve"].rounds, t["fixed"].rounds)
        ),
    ]


_FILL = text("""
INSERT INTO ledger (event_id, occurred_at, port_id, feature, provider, model, input_tokens,
                    output_tokens, total_tokens, source, key_prefix)
SELECT gen_random_uuid(), :start + (random() * (:now - :start)), 'seed-port', 'ocr', 'openai',
       'gpt-4o', 1000, 200, 1200, 'direct', 'seed'
FROM generate_series(1, :n)
""")
# The seed's checkBudget: read the budget, then SUM the ledger since the period start.
_SEED_BUDGET = text("SELECT enabled, hard_cap_tokens, period FROM budgets WHERE port_id = :p")
_SEED_SUM = text(
    "SELECT coalesce(sum(total_tokens), 0) FROM ledger WHERE port_id = :p AND occurred_at >= :since"
)


def bench_seed(settings: Settings, client: redis.Redis, sizes: list[int], calls: int) -> list[Row]:
    reset(settings, client)
    engine = make_engine(settings.database_url)
    now = datetime.now(UTC)
    start = period_start("month", now)
    rows: list[Row] = []
    with Gate(settings) as gate, engine.connect() as conn:
        budgets(gate, ["seed-port"])

        def seed_check() -> None:
            conn.execute(_SEED_BUDGET, {"p": "seed-port"}).one()
            conn.execute(_SEED_SUM, {"p": "seed-port", "since": start}).scalar_one()

        raw = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        ops = operations(gate, raw, ["seed-port"], seed=1)[0]
        pair = {"baseline": ops["baseline"], "check": ops["check"]}
        have = 0
        seed_base: Row | None = None
        ours_base: float | None = None
        for size in [0, *sizes]:
            if size > have:
                conn.execute(_FILL, {"start": start, "now": now, "n": size - have})
                conn.commit()
                conn.execute(text("ANALYZE ledger"))
                conn.commit()
                have = size
            seed = timed_row(
                "seed",
                f"seed check (Postgres SUM), {size:,} ledger rows",
                seed_check,
                max(20, calls // (1 + size // 20_000)),
            )
            # Paired with the trivial script, round by round: filling the ledger leaves
            # Postgres busy (checkpoint, autovacuum) on the machine gate.check shares,
            # and a slow patch there must not read as a ledger-size effect.
            t = interleaved(pair, calls)
            vs_trivial = paired_ratio(t["check"].rounds, t["baseline"].rounds)
            ours_base = ours_base or vs_trivial
            ours = Row(
                "seed",
                f"gate.check, {size:,} ledger rows",
                t["check"].per_second,
                "calls/s",
                t["check"].p50_us,
                t["check"].p99_us,
                ratio=vs_trivial / ours_base,
                note=f"{vs_trivial:.2f}× the trivial script in the same rounds",
            )
            seed_base = seed_base or seed
            rows += [seed.against(seed_base), ours]
        raw.close()
    engine.dispose()
    return rows
