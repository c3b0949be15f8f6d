"""The Postgres ledger's write path: COPY → staging → insert + rollup, in one statement.

Every write goes through `write_events`, whether it comes from the stream drain or
from the gate's direct path while Redis is down, so rollups are always updated from
the rows actually inserted, in the same statement: a redelivered event adds nothing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import psycopg

from quota.periods import from_ms

# Held shared by each batch's transaction, exclusively by a direct write (store.py):
# the two never interleave, so each sees the other's event ids.
DIRECT_LOCK = 0x71756F7461  # "quota"


# How far apart an event's two stream entries can be (a commit's retries on a promoted
# replica, and the two servers' clocks): generous, it only bounds the partitions probed.
TWIN_WINDOW = timedelta(days=1)


class StagedEvent(NamedTuple):
    """One event as it is COPYed into the staging table, in its columns' order: first
    the values of a stream entry in their order (quota/entries.py), so that the drain
    turns an entry into a staging line without building one of these."""

    event_id: str
    port_id: str
    user_id: str | None  # None or '' for none
    feature: str
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    request_id: str | None  # None or '' for none
    at_ms: int
    source: str  # 'stream' or 'direct'
    stream_ms: int | None
    stream_seq: int | None


_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS ledger_staging (
    event_id text, port_id text, user_id text, feature text, provider text, model text,
    input_tokens bigint, output_tokens bigint, request_id text, at_ms bigint, source text,
    stream_ms bigint, stream_seq bigint
) ON COMMIT DELETE ROWS
"""

_COPY = "COPY ledger_staging FROM STDIN"

# One statement: insert what is new, roll up exactly those rows, report how many.
# The rollup rows are upserted in key order so concurrent writers lock them in the
# same order and cannot deadlock. An event's time is the epoch plus its milliseconds:
# exact, and the statement took ~8 % less than with to_timestamp(at_ms / 1000.0),
# a numeric division per row.
_INSERT = """
WITH staged AS (
    -- An event twice in one batch (see below), at two times: its first.
    SELECT DISTINCT ON (event_id) * FROM ledger_staging ORDER BY event_id, at_ms
), inserted AS (
    INSERT INTO ledger (event_id, occurred_at, port_id, user_id, feature, provider, model,
                        input_tokens, output_tokens, total_tokens, request_id, source,
                        stream_ms, stream_seq, key_prefix)
    SELECT event_id::uuid, timestamptz 'epoch' + at_ms * interval '1 millisecond',
           port_id, NULLIF(user_id, ''), feature, provider, model, input_tokens,
           output_tokens, input_tokens + output_tokens, NULLIF(request_id, ''), source,
           stream_ms, stream_seq, %(prefix)s
    FROM staged s
    -- LATERAL with LIMIT: one index probe per event (an anti-join may hash every row
    -- of the window's partitions instead, each batch).
    LEFT JOIN LATERAL (SELECT true AS stored FROM ledger l
                       WHERE l.event_id = s.event_id::uuid
                         AND l.occurred_at BETWEEN %(since)s AND %(until)s
                       LIMIT 1) twin ON true
    -- A stream entry of an event (or request id) the gate also wrote directly: the
    -- direct row counts (ledger_direct is empty but after a Redis fault).
    -- Two anti-joins, not one with OR, so that each can use an index or a hash.
    WHERE (s.source = 'direct' OR (
        NOT EXISTS (SELECT 1 FROM ledger_direct d WHERE d.event_id = s.event_id::uuid)
        AND NOT EXISTS (SELECT 1 FROM ledger_direct d
                        WHERE d.key_prefix = %(prefix)s AND d.port_id = s.port_id
                          AND d.request_id = s.request_id)))
    -- The event stored already at another time (the key's occurred_at differs, so ON
    -- CONFLICT misses it): a commit retried on a promoted replica that had not got the
    -- dead primary's write appends it again, after the drain took the first entry.
    -- Bounded in time, so only the batch's one or two month partitions are probed.
    AND twin.stored IS NULL
    ON CONFLICT DO NOTHING
    RETURNING port_id, occurred_at, feature, provider, model, input_tokens, output_tokens,
              total_tokens
), rolled AS (
    INSERT INTO ledger_daily AS d (key_prefix, port_id, day, feature, provider, model,
                                   input_tokens, output_tokens, total_tokens, calls)
    SELECT %(prefix)s, port_id, (occurred_at AT TIME ZONE 'UTC')::date, feature, provider,
           model, sum(input_tokens), sum(output_tokens), sum(total_tokens), count(*)
    FROM inserted
    GROUP BY 2, 3, 4, 5, 6
    ORDER BY 2, 3, 4, 5, 6
    ON CONFLICT (key_prefix, port_id, day, feature, provider, model) DO UPDATE SET
        input_tokens = d.input_tokens + EXCLUDED.input_tokens,
        output_tokens = d.output_tokens + EXCLUDED.output_tokens,
        total_tokens = d.total_tokens + EXCLUDED.total_tokens,
        calls = d.calls + EXCLUDED.calls
)
SELECT count(*) FROM inserted
"""

_known_partitions: set[tuple[int, int]] = set()
_partitions_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _partitions_lock
    _partitions_lock = threading.Lock()  # the parent's may have been held mid-fork


os.register_at_fork(after_in_child=_after_fork_in_child)


def months_between(first_ms: int, last_ms: int) -> set[tuple[int, int]]:
    """Every (year, month) from the month of ``first_ms`` to that of ``last_ms``. Pure."""
    first, last = from_ms(first_ms), from_ms(last_ms)
    span = (last.year - first.year) * 12 + last.month - first.month
    return {
        (first.year + (first.month - 1 + k) // 12, (first.month - 1 + k) % 12 + 1)
        for k in range(span + 1)
    }


def ensure_partitions(conn: psycopg.Connection[Any], first_ms: int, last_ms: int) -> None:
    """Create the month partitions from ``first_ms``'s to ``last_ms``'s, once per process."""
    months = months_between(first_ms, last_ms)
    with _partitions_lock:
        missing = months - _known_partitions
    for year, month in sorted(missing):
        conn.execute(
            "SELECT quota_ensure_ledger_partition(%s)", (datetime(year, month, 1, tzinfo=UTC),)
        )
        with _partitions_lock:
            _known_partitions.add((year, month))


# COPY's text format gives these characters a meaning; a value holding one is escaped.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value: object) -> str:
    return "\\N" if value is None else str(value).translate(_COPY_ESCAPES)


def staging_line(event: StagedEvent) -> str:
    """The event as one line of COPY text for the staging table (no newline)."""
    return "\t".join(map(_copy_text, event))


def write_events(conn: psycopg.Connection[Any], events: Sequence[StagedEvent], prefix: str) -> int:
    """Insert ``events`` of the deployment ``prefix`` that are not in the ledger yet and
    roll them up, in the caller's transaction. Returns how many were new."""
    if not events:
        return 0
    at = [e.at_ms for e in events]
    return write_lines(conn, [staging_line(e) for e in events], min(at), max(at), prefix)


def write_lines(
    conn: psycopg.Connection[Any],
    lines: Sequence[str],
    first_ms: int,
    last_ms: int,
    prefix: str,
) -> int:
    """`write_events` for events given as staging lines (`staging_line`'s format), all
    between ``first_ms`` and ``last_ms``: sent to Postgres in one piece."""
    if not lines:
        return 0
    ensure_partitions(conn, first_ms, last_ms)
    with conn.cursor() as cur:
        # Shared: batches run side by side; a direct write (exclusive) waits for them.
        cur.execute("SELECT pg_advisory_xact_lock_shared(%s)", (DIRECT_LOCK,))
        cur.execute(_STAGING)
        with cur.copy(_COPY) as copy:
            copy.write("\n".join(lines) + "\n")
        twins = {"since": from_ms(first_ms) - TWIN_WINDOW, "until": from_ms(last_ms) + TWIN_WINDOW}
        cur.execute(_INSERT, {"prefix": prefix, **twins})
        row = cur.fetchone()
        cur.execute("TRUNCATE ledger_staging")  # the caller may write again before COMMIT
    return int(row[0]) if row else 0
