"""Reservation ids, and which reservations this process made."""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import NamedTuple

from quota import validation as v
from quota._exceptions import UnknownReservation

# One match checks every part of an id (charset and length, as validation would):
# commit and release parse one per call.
_RESERVATION_ID = re.compile(
    rf"([0-9a-f]{{32}})\|([0-9]{{1,13}})\|({v.id_pattern(1, v.FEATURE_MAX)})\|"
    rf"({v.id_pattern(0, v.LABEL_MAX)})\|({v.id_pattern(1, v.PORT_MAX)})"
)


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
    m = _RESERVATION_ID.fullmatch(value) if isinstance(value, str) else None
    if m is None or int(m[2]) > v.MAX_TOKENS:
        raise UnknownReservation(f"not a reservation id: {value!r:.200}")
    return ReservationRef(m[1], int(m[2]), m[3], m[4] or None, m[5])


class RecentReservations:
    """The reservations this process made, by id, bounded (oldest dropped). A commit
    takes its reservation's parts from here rather than parsing the id again (~1 µs);
    and a commit that Redis answers "unknown" for one of them means Redis lost it (a
    restart without persistence, a flush), and the usage is recorded without it.

    On every reserve, so kept cheap: no lock. Each dict operation is atomic; two threads
    adding past the bound at once may drop one entry more than needed, which only
    shortens a best-effort memory.
    """

    def __init__(self, limit: int) -> None:
        self._items: OrderedDict[str, ReservationRef] = OrderedDict()
        self._limit = limit

    def add(self, reservation_id: str, ref: ReservationRef) -> None:
        items = self._items
        items[reservation_id] = ref
        if len(items) > self._limit:
            items.popitem(last=False)

    def pop(self, reservation_id: str) -> ReservationRef | None:
        """Its parts if this process made it (and had not forgotten it yet), else None."""
        return self._items.pop(reservation_id, None)
