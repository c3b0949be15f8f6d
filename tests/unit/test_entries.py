"""The stream entry format: what append_event writes, the drain reads back exactly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota.entries import (
    FIELDS,
    LEGACY_FIELDS,
    pack,
    parse_entry,
    staging_line_of,
    unpack,
)
from quota.ledger import staging_line

_ID = st.from_regex(r"[A-Za-z0-9._:@/-]{1,20}", fullmatch=True)
_NUM = st.integers(0, 10**12).map(str)
_EVENT = st.fixed_dictionaries(
    {
        "id": st.uuids().map(str),
        "port": _ID,
        "user": st.one_of(st.just(""), _ID),
        "feature": _ID,
        "provider": _ID,
        "model": _ID,
        "in": _NUM,
        "out": _NUM,
        "req": st.one_of(st.just(""), _ID),
    }
)


@given(_EVENT)
def test_a_packed_entry_reads_back_as_written(values: dict[str, str]) -> None:
    """Its time is its id's: XADD stamped it with the server's clock."""
    flat = [x for kv in pack(values).items() for x in kv]
    assert unpack("1700000000000-3", flat) == ([values[f] for f in FIELDS], 1700000000000)
    row = parse_entry("1700000000000-3", flat)
    assert (row.event_id, row.port_id, row.user_id, row.request_id) == (
        values["id"],
        values["port"],
        values["user"],
        values["req"],
    )
    assert (row.input_tokens, row.output_tokens, row.at_ms) == (
        int(values["in"]),
        int(values["out"]),
        1700000000000,
    )
    assert (row.stream_ms, row.stream_seq) == (1700000000000, 3)


def test_entries_of_the_unpacked_format_still_drain() -> None:
    """Streams written before events were packed (in any field order, with their time
    as a field of its own)."""
    values = dict(
        zip(
            LEGACY_FIELDS,
            ["0190a6f2-8b1e-7c3d-9a4b-5c6d7e8f9a0b", "p", "", "ocr", "x", "y", "5", "6", "", "7"],
            strict=True,
        )
    )
    flat = [x for f in reversed(LEGACY_FIELDS) for x in (f, values[f])]
    assert unpack("9-0", flat) == ([values[f] for f in FIELDS], 7)


@pytest.mark.parametrize(
    "flat",
    [
        ["e", "id|port|user|feature|provider|model|1|2"],  # a value short
        ["e", "id|port|user|feature|provider|model|1|2|req|3"],
        ["id", "x", "port"],  # a field without a value
        ["id", "x"],  # legacy with fields missing
        ["e", "not-a-uuid|port||ocr|openai|gpt-4o|1|2|"],  # the INSERT's cast would fail
        ["e", "0190a6f2-8b1e-7c3d-9a4b-5c6d7e8f9a0b|port||ocr|openai|gpt-4o|-1|2|"],
        ["e", "0190a6f2-8b1e-7c3d-9a4b-5c6d7e8f9a0b|port||ocr|openai|gpt-4o|1|10000000000001|"],
    ],
)
def test_what_is_not_an_event_is_refused(flat: list[str]) -> None:
    with pytest.raises((KeyError, ValueError)):
        parse_entry("1-0", flat)


@given(_EVENT, st.integers(0, 2**40), st.integers(0, 99))
def test_the_drains_staging_line_is_the_parsed_events(
    values: dict[str, str], ms: int, seq: int
) -> None:
    """The drain copies a value the gate wrote without parsing it: the same line as the
    parsed event's, and the same time."""
    flat = [x for kv in pack(values).items() for x in kv]
    entry_id = f"{ms}-{seq}"
    event = parse_entry(entry_id, flat)
    assert staging_line_of(entry_id, flat) == (staging_line(event), ms)


def test_a_foreign_value_is_parsed_and_escaped_for_copy() -> None:
    """Outside the gate's charset (an older or foreign writer), a value is still an event:
    COPY's special characters are escaped, not taken as column or row breaks."""
    value = "0190a6f2-8b1e-7c3d-9a4b-5c6d7e8f9a0b|p\torn|u\\x|ocr|a\nb|m|1|2|"
    line, at = staging_line_of("5-1", ["e", value])
    assert at == 5
    assert line.split("\t") == [
        "0190a6f2-8b1e-7c3d-9a4b-5c6d7e8f9a0b",
        "p\\torn",
        "u\\\\x",
        "ocr",
        "a\\nb",
        "m",
        "1",
        "2",
        "",
        "5",
        "stream",
        "5",
        "1",
    ]
