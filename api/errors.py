"""One error shape for every 4xx/5xx: {"code", "message", "errors": [{"field", "reason"}]}.

`code` and `message` at the top level are also what Segment's SDKs read from an error response.
"""

from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        errors: Sequence[dict] = (),
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.errors = list(errors)
        self.headers = headers


def not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} {ident!r} does not exist")


def invalid(field: str, reason: str) -> ApiError:
    return ApiError(
        422, "validation_error", f"{field}: {reason}", [{"field": field, "reason": reason}]
    )


def field_errors(exc: ValidationError | RequestValidationError, prefix: str = "") -> list[dict]:
    """Pydantic errors as [{field: "profile.email", reason: "..."}], without the 'body.' noise."""
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body",)]
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

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = field_errors(exc)
        message = "; ".join(f"{e['field']}: {e['reason']}" for e in errors[:5])
        return JSONResponse(_body("validation_error", message, errors), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            _body(code, str(exc.detail), []), status_code=exc.status_code, headers=exc.headers
        )
