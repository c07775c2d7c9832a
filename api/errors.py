"""One error shape for every 4xx/5xx: {"code", "message", "errors": [{"field", "reason"}]}.

`code` and `message` at the top level are also what Segment's SDKs read from an error response.
"""

import math
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from herald.core.errors import (
    ChannelMisconfigured,
    ChannelUnavailable,
    Conflict,
    DomainError,
    Invalid,
    InvalidDefinition,
    Locked,
    NotFound,
    NotReady,
    Unavailable,
)


class ApiError(StarletteHTTPException):
    """An error in the API's shape.

    An HTTPException so that one raised while FastAPI reads the body (the body-size cap, the key
    check before the body) reaches the handlers below instead of becoming a generic 400.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        errors: Sequence[dict] = (),
        headers: dict[str, str] | None = None,
    ):
        super().__init__(status, message, headers)
        self.status, self.code, self.message = status, code, message
        self.errors = list(errors)

    def __str__(self) -> str:
        return self.message


def not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} {ident!r} does not exist")


def invalid(field: str, reason: str) -> ApiError:
    return ApiError(
        422, "validation_error", f"{field}: {reason}", [{"field": field, "reason": reason}]
    )


# Each kind of domain refusal, and its HTTP answer (status, code), most specific first.
_DOMAIN_ANSWERS: tuple[tuple[type[DomainError], int, str], ...] = (
    (NotFound, 404, "not_found"),
    (Invalid, 422, "validation_error"),
    (InvalidDefinition, 422, "validation_error"),
    (NotReady, 422, "not_ready"),
    (Conflict, 409, "conflict"),
    (Locked, 423, "locked"),
    (Unavailable, 503, "temporal_unavailable"),
    # A message sent now (test send) that the channel's provider could not take.
    (ChannelUnavailable, 503, "provider_unavailable"),
    (ChannelMisconfigured, 502, "provider_misconfigured"),
)


def domain_error(exc: DomainError) -> ApiError:
    headers = None
    if isinstance(exc, ChannelUnavailable) and exc.retry_after is not None:
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    for kind, status, code in _DOMAIN_ANSWERS:
        if isinstance(exc, kind):
            return ApiError(status, code, exc.message, exc.errors, headers)
    return ApiError(400, "refused", exc.message, exc.errors)


def payload_too_large(limit: int) -> ApiError:
    reason = f"the body exceeds {limit // (1024 * 1024)} MiB"
    return ApiError(413, "payload_too_large", reason, [{"field": "body", "reason": reason}])


def not_storable(field: str, reason: str) -> ApiError:
    """A value PostgreSQL cannot store (see models.types.unstorable), in the DTOs' wording."""
    return invalid(field or "body", f"{field or 'the body'} {reason}")


def field_errors(exc: ValidationError | RequestValidationError, prefix: str = "") -> list[dict]:
    """Pydantic errors as [{field: "profile.email", reason: "..."}], without the 'body.' noise."""
    out = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            # FastAPI puts the character offset in `loc`; it is no field.
            reason = f"not valid JSON ({(err.get('ctx') or {}).get('error', 'decode error')})"
            out.append({"field": prefix.rstrip(".") or "body", "reason": reason})
            continue
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body",)]
        if path := (err.get("ctx") or {}).get("path"):
            loc.append(path)  # models.types.reject_unstorable says where inside the model
        field = prefix + ".".join(loc).replace(".[", "[")
        reason = err.get("msg", "invalid").removeprefix("Value error, ")
        out.append({"field": field or prefix.rstrip(".") or "body", "reason": reason})
    return out


def _body(code: str, message: str, errors: list[dict]) -> dict:
    return {"code": code, "message": message, "errors": errors}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            _body(exc.code, exc.message, exc.errors), status_code=exc.status, headers=exc.headers
        )

    @app.exception_handler(DomainError)
    async def _domain_error(request: Request, exc: DomainError) -> JSONResponse:
        return await _api_error(request, domain_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = field_errors(exc)
        message = "; ".join(f"{e['field']}: {e['reason']}" for e in errors[:5])
        return JSONResponse(_body("validation_error", message, errors), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = exc.headers
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return JSONResponse(
            _body(code, str(exc.detail), []), status_code=exc.status_code, headers=headers
        )


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path. Starlette's 405 names only the first
    matching route's methods, and GET and PATCH on /v1/account are two routes."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
    ]


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
