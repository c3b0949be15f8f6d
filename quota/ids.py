"""Event ids: UUIDv7 (RFC 9562), time-ordered, so the ledger's primary-key index grows
at its right edge instead of being written all over (as random UUIDv4s would be)."""

from __future__ import annotations

import os
import time
import uuid

_RAND_A = 0xFFF
_RAND_B = (1 << 62) - 1


def uuid7() -> str:
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | ((rand >> 62) & _RAND_A) << 64
        | 0b10 << 62
        | (rand & _RAND_B)
    )
    return str(uuid.UUID(int=value))
