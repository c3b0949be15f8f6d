"""Reservation ids, and which reservations this process made."""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

from quota import validation as v
from quota._exceptions import QuotaError, UnknownReservation

_HEX_LEN = 32
_HEX_DIGITS = frozenset("0123456789abcdef")


class ReservationRef(NamedTuple):
    """What a reservation id says: Redis keeps only ``member`` in the port's open set,
    so commit and release bring the rest (a hold is one zset member, no key of its own).
    An id naming tokens, or a port, that its hex id was not reserved with finds no member:
    an unknown reservation."""

    hex_id: str
    tokens: int
    feature: str
    user_id: str | None
    port: str

    @property
    def member(self) -> str:
        """Its member of the open set: ``<hex>:<tokens>`` (lib.lua reads the tokens)."""
        return f"{self.hex_id}:{self.tokens}"


def reservation_id(hex_id: str, tokens: int, feature: str, user_id: str | None, port: str) -> str:
    """``<32 hex>|<tokens>|<feature>|<user or ''>|<port>``: no identifier holds "|"."""
    return f"{hex_id}|{tokens}|{feature}|{user_id or ''}|{port}"


def parse_reservation_id(value: object) -> ReservationRef:
    """The parts of a reservation id; anything malformed is an unknown reservation."""
    if not isinstance(value, str):
        raise UnknownReservation(f"not a reservation id: {value!r:.200}")
    parts = value.split("|")
    try:
        if len(parts) != 5:
            raise ValueError
        hex_id, tokens, feature, user, port = parts
        if len(hex_id) != _HEX_LEN or not _HEX_DIGITS.issuperset(hex_id):
            raise ValueError
        if not tokens.isdigit():
            raise ValueError
        return ReservationRef(
            hex_id,
            v.tokens("tokens", int(tokens)),
            v.feature(feature),
            v.user_id(user or None),
            v.port_id(port),
        )
    except (ValueError, QuotaError):
        raise UnknownReservation(f"not a reservation id: {value!r:.200}") from None


class RecentReservations:
    """The ids of the reservations this process made, bounded (oldest dropped): a commit
    that Redis answers "unknown" for one of them means Redis lost it (a restart without
    persistence, a flush), and the usage is recorded without it.

    On every reserve, so kept cheap: no lock. Each dict operation is atomic; two threads
    adding past the bound at once may drop one entry more than needed, which only
    shortens a best-effort memory.
    """

    def __init__(self, limit: int) -> None:
        self._items: OrderedDict[str, None] = OrderedDict()
        self._limit = limit

    def add(self, reservation_id: str) -> None:
        items = self._items
        items[reservation_id] = None
        if len(items) > self._limit:
            items.popitem(last=False)

    def pop(self, reservation_id: str) -> bool:
        """True if this process made it (and had not forgotten it yet)."""
        return self._items.pop(reservation_id, False) is None
