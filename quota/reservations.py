"""Reservation ids, and which reservations this process made."""

from __future__ import annotations

import random
import re
import time
import zlib
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
    #: Made under an outage policy while Redis was down: Redis holds nothing for it,
    #: and commit records its usage.
    degraded: bool = False

    @property
    def event_id(self) -> str:
        """The id of the usage event its commit writes, on every path (stream, direct
        row, spool), so that the ledger counts a commit once however often it is tried."""
        h = self.hex_id
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    @property
    def member(self) -> str:
        """Its member of the open set: ``<hex>:<tokens>`` (lib.lua reads the tokens)."""
        return f"{self.hex_id}:{self.tokens}"


def _seal(head: str, tokens: int, feature: str, user_id: str | None, port: str, flag: str) -> str:
    text = f"{head}|{tokens}|{feature}|{user_id or ''}|{port}|{flag}"
    return f"{zlib.crc32(text.encode()):08x}"


def new_hex_id(
    tokens: int, feature: str, user_id: str | None, port: str, *, degraded: bool = False
) -> str:
    """A reservation's hex id: 12 hex of milliseconds (so the events its commits write
    are time-ordered in the ledger's index), 12 random, and an 8-hex seal over every
    part of the id. An id altered to name another feature, user, port or token count,
    or to pass for a degraded one, fails its seal: an unknown reservation. Unique, not
    secret: a reservation id is no capability."""
    head = f"{time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF:012x}{random.getrandbits(48):012x}"
    return head + _seal(head, tokens, feature, user_id, port, "d" if degraded else "")


def reservation_id(
    hex_id: str,
    tokens: int,
    feature: str,
    user_id: str | None,
    port: str,
    degraded: bool = False,
) -> str:
    """``<32 hex>|<tokens>|<feature>|<user or ''>|<port>``: no identifier holds "|".
    (``degraded`` is in the hex id's seal, not in a field of its own.)"""
    return f"{hex_id}|{tokens}|{feature}|{user_id or ''}|{port}"


def parse_reservation_id(value: object) -> ReservationRef:
    """The parts of a reservation id; anything malformed or altered is an unknown
    reservation."""
    m = _RESERVATION_ID.fullmatch(value) if isinstance(value, str) else None
    if m is None or int(m[2]) > v.MAX_TOKENS:
        raise UnknownReservation(f"not a reservation id: {value!r:.200}")
    hex_id, tokens, feature, user, port = m[1], int(m[2]), m[3], m[4] or None, m[5]
    head, seal = hex_id[:24], hex_id[24:]
    if seal == _seal(head, tokens, feature, user, port, ""):
        return ReservationRef(hex_id, tokens, feature, user, port)
    if seal == _seal(head, tokens, feature, user, port, "d"):
        return ReservationRef(hex_id, tokens, feature, user, port, True)
    raise UnknownReservation(f"unknown reservation {value!r:.200} (altered)")


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
