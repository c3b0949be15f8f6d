"""Event ids: UUIDv7 (RFC 9562), time-ordered, so the ledger's primary-key index grows
at its right edge instead of being written all over (as random UUIDv4s would be)."""

from __future__ import annotations

import random
import time

_RAND_B = (1 << 62) - 1


def uuid7() -> str:
    # random's module-level generator: seeded from os.urandom and reseeded in a forked
    # child (so processes never share a sequence), without a syscall per id. 74 random
    # bits per millisecond make a collision between two events of one port unthinkable.
    ms = time.time_ns() // 1_000_000
    rand = random.getrandbits(74)
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | (rand >> 62) << 64
        | 0b10 << 62
        | (rand & _RAND_B)
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
