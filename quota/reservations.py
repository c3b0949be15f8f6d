"""Reservation ids, and what this process remembers of the reservations it made."""

from __future__ import annotations

from collections import OrderedDict

from quota import validation as v
from quota._exceptions import QuotaError, UnknownReservation

_HEX_LEN = 32


def reservation_id(hex_id: str, port: str) -> str:
    """``<32 hex>.<port>``: the port is read back from the id, never trusted alone (the
    hex part must name a reservation stored under that very port)."""
    return f"{hex_id}.{port}"


def split_reservation_id(value: object) -> tuple[str, str]:
    """``<32 hex>.<port>`` → (hex, port); anything else is an unknown reservation."""
    if not isinstance(value, str) or len(value) <= _HEX_LEN + 1 or value[_HEX_LEN] != ".":
        raise UnknownReservation(f"not a reservation id: {value!r:.200}")
    hex_id, port = value[:_HEX_LEN], value[_HEX_LEN + 1 :]
    try:
        int(hex_id, 16)
        v.port_id(port)
    except (ValueError, QuotaError):
        raise UnknownReservation(f"not a reservation id: {value!r:.200}") from None
    return hex_id, port


class RecentReservations:
    """Feature and user of the reservations this process made, bounded (oldest dropped):
    what commit needs to ledger the usage when Redis, which holds them, is down.

    On every reserve, so kept cheap: one string per entry (no tuple for the garbage
    collector to track; ids, features and users cannot contain "|") and no lock. Each
    dict operation is atomic; two threads adding past the bound at once may drop one
    entry more than needed, which only shortens a best-effort memory.
    """

    def __init__(self, limit: int) -> None:
        self._items: OrderedDict[str, str] = OrderedDict()
        self._limit = limit

    def add(self, reservation_id: str, feature: str, user_id: str | None) -> None:
        items = self._items
        items[reservation_id] = f"{feature}|{user_id or ''}"
        if len(items) > self._limit:
            items.popitem(last=False)

    def pop(self, reservation_id: str) -> tuple[str, str | None] | None:
        value = self._items.pop(reservation_id, None)
        if value is None:
            return None
        feature, _, user = value.partition("|")
        return feature, user or None
