"""API keys: random secrets shown once, stored as SHA-256 digests, compared in constant time.

Keys carry 190 bits of randomness, so a fast hash is enough (no password stretching needed).
"""

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from herald.core.db import session_scope
from herald.core.ids import new_id
from models.api_key import ApiKey
from models.enums import ApiKeyKind

_PREFIX = {ApiKeyKind.private: "hk_priv_", ApiKeyKind.write: "hk_write_"}
_LOOKUP_CHARS = 8


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _lookup(key: str) -> str:
    # The secret itself may contain "_" (token_urlsafe): split on the known prefix, never on "_".
    prefix = next((p for p in _PREFIX.values() if key.startswith(p)), "")
    return key[: len(prefix) + _LOOKUP_CHARS]


def create_key(session: Session, kind: ApiKeyKind, name: str) -> tuple[ApiKey, str]:
    """Returns the stored row and the plaintext key, which is not kept anywhere."""
    plaintext = _PREFIX[kind] + secrets.token_urlsafe(24)
    row = ApiKey(
        id=new_id("key"), name=name, kind=kind, lookup=_lookup(plaintext), digest=digest(plaintext)
    )
    session.add(row)
    return row, plaintext


@dataclass(frozen=True)
class Principal:
    key_id: str
    kind: ApiKeyKind


class KeyVerifier:
    """Checks presented keys; remembers valid ones briefly so each request skips a DB read."""

    def __init__(self, engine: Engine, cache_seconds: float):
        self.engine = engine
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Principal]] = {}

    def verify(self, presented: str) -> Principal | None:
        presented_digest = digest(presented)
        cached = self._cache.get(presented_digest)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        if not any(presented.startswith(p) for p in _PREFIX.values()):
            return None
        with session_scope(self.engine) as session:
            row = session.exec(select(ApiKey).where(ApiKey.lookup == _lookup(presented))).first()
        if row is None or row.revoked_at is not None:
            return None
        if not hmac.compare_digest(row.digest, presented_digest):
            return None
        principal = Principal(row.id, ApiKeyKind(row.kind))
        self._cache[presented_digest] = (time.monotonic() + self.cache_seconds, principal)
        return principal
