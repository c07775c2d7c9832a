"""Secrets at rest: provider credentials are stored as Fernet tokens, never in clear.

The key comes from settings (`secret_key`, with `secret_key_previous` for rotation); a dev
machine without one gets a random key file under data_dir, so `herald dev` needs no setup.
"""

import base64
import hashlib
import secrets
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from herald.core.config import Settings
from herald.core.errors import NotReady


class SecretUnreadable(Exception):
    """A stored secret does not decrypt with the current or previous keys."""


def _fernet(material: str) -> Fernet:
    # Any string works as a key: Fernet wants 32 url-safe base64 bytes, so derive them.
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(material.encode()).digest()))


def _dev_key(settings: Settings) -> str:
    path = settings.data_dir / "secret.key"
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


@lru_cache(maxsize=8)
def _cipher(primary: str, previous: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([_fernet(primary), *(_fernet(p) for p in previous)])


def cipher(settings: Settings) -> MultiFernet:
    primary = settings.secret_key
    if not primary:
        if settings.env == "prod":
            raise NotReady("HERALD_SECRET_KEY is not set: provider credentials cannot be stored")
        primary = _dev_key(settings)
    return _cipher(primary, tuple(settings.secret_key_previous))


def encrypt(settings: Settings, value: str) -> str:
    return cipher(settings).encrypt(value.encode()).decode()


def decrypt(settings: Settings, token: str) -> str:
    try:
        return cipher(settings).decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise SecretUnreadable(
            "a stored secret does not decrypt with HERALD_SECRET_KEY or "
            "HERALD_SECRET_KEY_PREVIOUS (was the key changed without keeping the old one?)"
        ) from exc
