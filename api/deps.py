"""Shared dependencies: the engine, the caller's key, and input every route refuses."""

import base64
import binascii
import json
import re
from typing import Annotated, Any, get_args, get_origin

from fastapi import Depends, Request
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.types import Scope

from api.errors import ApiError, not_storable
from herald.core.config import Settings
from herald.core.keys import Principal
from models.enums import ApiKeyKind
from models.types import unstorable


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


# The principal, once verified for this request (before its body; see check_key_before_body).
_PRINCIPAL = "herald.principal"


def _authenticate(request: Request) -> Principal:
    if (known := request.scope.get(_PRINCIPAL)) is not None:
        return known
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
    request.scope[_PRINCIPAL] = principal
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


async def check_key_before_body(scope: Scope) -> None:
    """Runs the key check the matched route declares, before the first byte of its body is read.

    FastAPI reads a route's whole body before it solves dependencies, so without this a caller
    with no key could make the API read (up to the size cap) a body it will refuse anyway.
    """
    check = _key_check(scope.get("route"))
    if check is not None and _PRINCIPAL not in scope:
        await run_in_threadpool(check, Request(scope))  # verifying a key can query the DB


def _key_check(route: Any):
    dependant = getattr(route, "dependant", None)
    pending = list(dependant.dependencies) if dependant is not None else []
    while pending:
        dependency = pending.pop()
        if dependency.call in (require_private_key, require_ingest_key):
            return dependency.call
        pending.extend(dependency.dependencies)
    return None


async def refuse_unstorable_input(request: Request) -> None:
    """App-wide: path, query and JSON body values PostgreSQL cannot store are a 422 naming them.

    One check for every route, so no router has to remember it (a NUL in a path was a 500).
    The key is checked first, so a caller without one learns nothing about its input.
    """
    await check_key_before_body(request.scope)
    for where, params in (
        ("path", request.path_params.items()),
        ("query", request.query_params.multi_items()),
    ):
        for name, value in params:
            if "\x00" in name:
                raise not_storable(where, "has a parameter whose name contains a NUL character")
            if isinstance(value, str) and "\x00" in value:
                raise not_storable(f"{where}.{name}", "contains a NUL character (\\u0000)")
    if _is_json(request):
        body = await request.body()  # FastAPI has read it already; this is its cached copy
        if _maybe_unstorable(body):
            _check_json_body(request, body)


# A cheap look at the raw body first, so the common body is not parsed twice: NUL and lone
# surrogates can only arrive as \u escapes, NaN and Infinity only as those words. (A number
# too big for a float also becomes Infinity; the DTOs' own check, reject_unstorable, sees it.)
_ESCAPES = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def _maybe_unstorable(body: bytes) -> bool:
    return b"NaN" in body or b"Infinity" in body or _ESCAPES.search(body) is not None


def _is_json(request: Request) -> bool:
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _check_json_body(request: Request, body: bytes) -> None:
    try:
        document = json.loads(body)
    except ValueError:
        return  # not JSON: the route's own parsing answers that
    skipped = _validated_by_handler(request.scope.get("route"))
    if None in skipped:
        return
    if isinstance(document, dict) and skipped:
        document = {k: v for k, v in document.items() if k not in skipped}
    if (found := unstorable(document)) is not None:
        raise not_storable(*found)


def _validated_by_handler(route: Any) -> list[str | None]:
    """Body parameters a route takes as untyped JSON (`list[Any]`, `dict[str, Any]`).

    Their handlers validate each item on its own, with DTOs that refuse the same values
    (models.types.reject_unstorable), so one bad event is rejected alone, not the whole batch.
    None stands for a body that is one such parameter, not embedded in an object.
    """
    dependant = getattr(route, "dependant", None)
    params = list(dependant.body_params) if dependant is not None else []
    embedded = len(params) > 1 or any(getattr(p.field_info, "embed", False) for p in params)
    untyped = [p for p in params if _untyped(p.field_info.annotation)]
    if untyped and not embedded:
        return [None]
    return [p.alias for p in untyped]


def _untyped(annotation: Any) -> bool:
    origin, args = get_origin(annotation), get_args(annotation)
    return origin in (list, dict) and bool(args) and args[-1] is Any
