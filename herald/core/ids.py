"""Readable, time-ordered ids: a type prefix, 48 bits of milliseconds, 40 random bits.

Time ordering keeps cursor pagination chronological; the prefix makes IDs self-describing in
the Temporal UI (workflow IDs embed them).
"""

import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lowercase


def _b32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    ms = time.time_ns() // 1_000_000
    return f"{prefix}_{_b32(ms, 10)}{_b32(secrets.randbits(40), 8)}"
