"""Shared dependencies: the engine, the caller's key, and pagination parameters."""

import base64
import binascii
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.engine import Engine

from api.errors import ApiError
from herald.config import Settings
from herald.keys import Principal
from models.enums import ApiKeyKind


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer" and credentials.strip():
        return credentials.strip()
    if scheme == "basic" and credentials.strip():
        # Segment/RudderStack SDKs send the write key as the basic-auth username.
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[0] or None
    return None


def _authenticate(request: Request) -> Principal:
    presented = _presented_key(request)
    if presented is None:
        raise ApiError(
            401,
            "unauthorized",
            "missing API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": 'Bearer realm="herald"'},
        )
    principal = request.app.state.keys.verify(presented)
    if principal is None:
        raise ApiError(
            401,
            "unauthorized",
            "invalid or revoked API key",
            headers={"WWW-Authenticate": 'Bearer realm="herald", error="invalid_token"'},
        )
    return principal


def require_private_key(request: Request) -> Principal:
    principal = _authenticate(request)
    if principal.kind is not ApiKeyKind.private:
        raise ApiError(
            403,
            "forbidden",
            "a write key can only send events and identify profiles; use a private key here",
        )
    return principal


def require_ingest_key(request: Request) -> Principal:
    """Ingest endpoints take a write key or a private key."""
    return _authenticate(request)


PrivateKey = Annotated[Principal, Depends(require_private_key)]
IngestKey = Annotated[Principal, Depends(require_ingest_key)]
