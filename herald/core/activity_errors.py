"""Failures that retrying cannot fix fail fast, typed, instead of being retried for ever.

Temporal retries every activity error unless it is marked non-retryable, and the default retry
policy never gives up. A value too long for its column, a constraint violation, text the
database refuses (NUL, lone surrogates), a template that cannot render or a condition this
installation cannot evaluate fails the same way on every attempt, so one such input once kept a
local activity retrying for ever and stranded its enrollment. `PermanentErrorInterceptor` turns
those errors into non-retryable `ApplicationError`s of type `PERMANENT_ERROR_TYPE` for every
activity and local activity; workflows catch them (herald/core/activity_failures.py
`is_permanent`) and record the step as failed.

Operational errors (connection lost, lock timeout, serialisation failure, statement timeout) stay
retryable: they are about the moment, not the input.
"""

from typing import Any

from sqlalchemy.exc import DataError, IntegrityError
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from herald.core.activity_failures import MESSAGE_CHARS, PERMANENT_ERROR_TYPE
from herald.core.errors import PermanentError

_PERMANENT = (DataError, IntegrityError, PermanentError)
# The router splits a failing batch itself and parks the row at fault (activities/routing.py):
# an error that still escapes it is about the moment, and failing it for good would stop routing.
_EXEMPT = frozenset({"route_pending"})


def permanent_reason(exc: BaseException) -> str | None:
    """A short description when `exc` cannot be fixed by retrying, else None."""
    if isinstance(exc, DataError | IntegrityError):
        # The driver's own message names the problem ("value too long for type character
        # varying(60)"); its first line carries no bound parameters, so no personal data.
        original = exc.orig if exc.orig is not None else exc
        first_line = (str(original).strip().splitlines() or [""])[0]
        return f"{type(original).__name__}: {first_line}"[:MESSAGE_CHARS]
    if isinstance(exc, PermanentError):
        return f"{type(exc).__name__}: {exc}"[:MESSAGE_CHARS]
    return None


class _FailPermanentErrorsFast(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        try:
            return await self.next.execute_activity(input)
        except _PERMANENT as exc:
            if activity.info().activity_type in _EXEMPT:
                raise
            reason = permanent_reason(exc)
            raise ApplicationError(
                reason or type(exc).__name__, type=PERMANENT_ERROR_TYPE, non_retryable=True
            ) from exc


class PermanentErrorInterceptor(Interceptor):
    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _FailPermanentErrorsFast(next)
