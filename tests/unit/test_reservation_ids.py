"""Reservation ids carry what commit and release need: made and read back whole."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota import UnknownReservation
from quota.reservations import parse_reservation_id, reservation_id

names = st.text(alphabet=string.ascii_letters + string.digits + "._:@/-", min_size=1, max_size=64)
hexes = st.integers(min_value=0, max_value=2**128 - 1).map(lambda n: f"{n:032x}")


@given(hexes, st.integers(min_value=0, max_value=10**12), names, st.none() | names, names)
def test_an_id_reads_back_as_made(
    hex_id: str, tokens: int, feature: str, user: str | None, port: str
) -> None:
    ref = parse_reservation_id(reservation_id(hex_id, tokens, feature, user, port))
    assert ref == (hex_id, tokens, feature, user, port)
    assert ref.member == f"{hex_id}:{tokens}"


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "0" * 32 + ".port",  # the earlier format
        "0" * 32 + "|1|ocr|u|p|extra",
        "0" * 32 + "|1|ocr|u",
        "0" * 32 + "|1.5|ocr|u|p",
        "0" * 32 + "|1|ocr|u|",
        "0" * 32 + "||ocr|u|p",
        "0" * 32 + "|1||u|p",
        "0" * 32 + "|1|o cr|u|p",
        "A" * 32 + "|1|ocr|u|p",  # upper case is not what reserve writes
        "0" * 32 + f"|{10**13}|ocr|u|p",
        "0" * 32 + "|\u0661|ocr|u|p",  # a digit, but not an ASCII one
        "0" * 32 + "|1|" + "f" * 65 + "|u|p",
        "0" * 32 + "|1|ocr|" + "u" * 129 + "|p",
        "0" * 32 + "|1|ocr|u|" + "p" * 129,
    ],
)
def test_malformed_ids_are_unknown_reservations(value: object) -> None:
    with pytest.raises(UnknownReservation):
        parse_reservation_id(value)
