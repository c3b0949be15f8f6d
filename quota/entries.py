"""The usage stream's entries: the format lib.lua's append_event writes and the
drain reads. Pure.

An entry is one field, ``e``, holding the event's values joined by ``|`` in `FIELDS`
order. One field rather than ten: XADD costs Redis per argument, and so does every
argument the client sends to be copied into it (packing took 5 % of commit's
instructions and 9 % of record's), and the drain splits one string instead of
walking ten pairs. ``|`` cannot occur in a value: ids and labels are validated to
``[A-Za-z0-9._:@/-]`` and the rest are numbers. The event's time is the entry id's
(XADD stamps it with the server's clock in the same step that counts the event).
"""

from __future__ import annotations

import re
import uuid

from quota.ledger import StagedEvent, staging_line
from quota.validation import FEATURE_MAX, LABEL_MAX, MAX_TOKENS, PORT_MAX, id_pattern

#: The values of an event, in the order they are joined.
FIELDS = ("id", "port", "user", "feature", "provider", "model", "in", "out", "req")
EVENT_FIELD = "e"
SEP = "|"
#: Entries written before events were packed: one stream field per value, and the
#: time as a field of its own.
LEGACY_FIELDS = (*FIELDS, "at")


def stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def event_value(
    event_id: str,
    port: str,
    user: str | None,
    feature: str,
    provider: str,
    model: str,
    tin: int | str,
    tout: int | str,
    req: str | None,
) -> str:
    """The entry's one value, the event's values joined by `SEP` in `FIELDS` order: what
    the gate sends commit and record, which append it as is. A missing user or request
    id is ''."""
    return f"{event_id}|{port}|{user or ''}|{feature}|{provider}|{model}|{tin}|{tout}|{req or ''}"


def pack(values: dict[str, str]) -> dict[str, str]:
    """An entry's fields as append_event writes them (benchmarks and tests write some)."""
    return {EVENT_FIELD: event_value(*(values[f] for f in FIELDS))}


def unpack(entry_id: str, flat: list[str]) -> tuple[list[str], int]:
    """The event's values in `FIELDS` order and its time (ms), from an entry's id and
    flat [field, value, ...] list; ValueError or KeyError if it is not an event.

    Entries written before quota packed them are read too, so that a stream written
    by an older version drains after an upgrade.
    """
    if len(flat) == 2 and flat[0] == EVENT_FIELD:
        values = flat[1].split(SEP)
        at = stream_id(entry_id)[0]
    else:
        named = dict(zip(flat[0::2], flat[1::2], strict=True))
        values = [named[f] for f in FIELDS]
        at = int(named["at"])
    if len(values) != len(FIELDS):
        raise ValueError(f"an event has {len(FIELDS)} values, this entry {len(values)}")
    return values, at


def parse_entry(entry_id: str, flat: list[str]) -> StagedEvent:
    """A stream entry as a ledger row; KeyError/ValueError if it is not an event (an
    event id that is no UUID, token counts out of range: the INSERT would fail on them,
    and the batch with it, every time). A missing user or request id stays ''."""
    ms, seq = stream_id(entry_id)
    values, at = unpack(entry_id, flat)
    ev_id, port, user, feature, provider, model, tin, tout, req = values
    n_in, n_out = int(tin), int(tout)
    if not (0 <= n_in <= MAX_TOKENS and 0 <= n_out <= MAX_TOKENS):
        raise ValueError(f"token counts out of range: {tin}, {tout}")
    return StagedEvent(
        str(uuid.UUID(ev_id)),
        port,
        user,
        feature,
        provider,
        model,
        n_in,
        n_out,
        req,
        at,
        "stream",
        ms,
        seq,
    )


# An entry's value as the gate writes it: validation's charset and lengths, a UUID,
# token counts of fewer digits than MAX_TOKENS (so within it). Checked in one match, such
# a value needs no parsing on its way to the staging table: none of the characters COPY's
# text format gives a meaning to can occur in it, and its values are in the staging
# columns' order.
_TOKENS = f"[0-9]{{1,{len(str(MAX_TOKENS)) - 1}}}"
_PACKED = re.compile(
    "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    + rf"\|{id_pattern(1, PORT_MAX)}\|{id_pattern(0, LABEL_MAX)}\|{id_pattern(1, FEATURE_MAX)}"
    + rf"\|{id_pattern(1, LABEL_MAX)}\|{id_pattern(1, LABEL_MAX)}\|{_TOKENS}\|{_TOKENS}"
    + rf"\|{id_pattern(0, LABEL_MAX)}"
)


def staging_line_of(entry_id: str, flat: list[str]) -> tuple[str, int]:
    """A stream entry as ledger.staging_line formats it, and its time (ms); KeyError or
    ValueError if it is not an event. What the drain sends Postgres for each entry: a
    value the gate wrote has its separators turned into tabs, ~1 µs; anything else
    (older formats, a foreign value) goes through `parse_entry`."""
    if len(flat) == 2 and flat[0] == EVENT_FIELD and _PACKED.fullmatch(flat[1]):
        ms, _, seq = entry_id.partition("-")
        values = flat[1].replace(SEP, "\t")
        return f"{values}\t{ms}\tstream\t{ms}\t{seq}", int(ms)
    event = parse_entry(entry_id, flat)
    return staging_line(event), event.at_ms
