"""The stream entry format: what append_event writes, the drain reads back exactly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota.entries import FIELDS, LEGACY_FIELDS, pack, parse_entry, unpack

_ID = st.from_regex(r"[A-Za-z0-9._:@/-]{1,20}", fullmatch=True)
_NUM = st.integers(0, 10**12).map(str)


@given(
    st.fixed_dictionaries(
        {
            "id": _ID,
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
)
def test_a_packed_entry_reads_back_as_written(values: dict[str, str]) -> None:
    """Its time is its id's: XADD stamped it with the server's clock."""
    flat = [x for kv in pack(values).items() for x in kv]
    assert unpack("1700000000000-3", flat) == ([values[f] for f in FIELDS], 1700000000000)
    row = parse_entry("1700000000000-3", flat)
    assert (row.event_id, row.port_id, row.user_id, row.request_id) == (
        values["id"],
        values["port"],
        values["user"] or None,
        values["req"] or None,
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
        zip(LEGACY_FIELDS, ["e1", "p", "", "ocr", "x", "y", "5", "6", "", "7"], strict=True)
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
    ],
)
def test_what_is_not_an_event_is_refused(flat: list[str]) -> None:
    with pytest.raises((KeyError, ValueError)):
        parse_entry("1-0", flat)
