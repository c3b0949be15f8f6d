"""Reservation ids carry what commit and release need: made and read back whole."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota import UnknownReservation
from quota.reservations import new_hex_id, parse_reservation_id, reservation_id

names = st.text(alphabet=string.ascii_letters + string.digits + "._:@/-", min_size=1, max_size=64)


@given(st.integers(min_value=0, max_value=10**12), names, st.none() | names, names, st.booleans())
def test_an_id_reads_back_as_made(
    tokens: int, feature: str, user: str | None, port: str, degraded: bool
) -> None:
    hex_id = new_hex_id(tokens, feature, user, port, degraded=degraded)
    ref = parse_reservation_id(reservation_id(hex_id, tokens, feature, user, port))
    assert ref == (hex_id, tokens, feature, user, port, degraded)
    assert ref.member == f"{hex_id}:{tokens}"
    assert ref.event_id.replace("-", "") == hex_id


@pytest.mark.parametrize(
    ("part", "altered"),
    [(1, "11"), (2, "chat"), (3, "mallory"), (3, ""), (4, "other-port")],
)
def test_an_altered_id_is_unknown(part: int, altered: str) -> None:
    hex_id = new_hex_id(10, "ocr", "alice", "port-1")
    parts = reservation_id(hex_id, 10, "ocr", "alice", "port-1").split("|")
    parts[part] = altered
    with pytest.raises(UnknownReservation):
        parse_reservation_id("|".join(parts))


def test_a_normal_id_cannot_pass_for_a_degraded_one() -> None:
    hex_id = new_hex_id(10, "ocr", None, "p", degraded=True)
    assert parse_reservation_id(reservation_id(hex_id, 10, "ocr", None, "p")).degraded
    assert not parse_reservation_id(
        reservation_id(new_hex_id(10, "ocr", None, "p"), 10, "ocr", None, "p")
    ).degraded


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
