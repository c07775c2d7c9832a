"""Errors every layer shares."""

from typing import Any


class PermanentError(Exception):
    """An input no retry can fix: the same call fails the same way on every attempt.

    Activities that raise one fail at once, non-retryable (herald/core/activity_errors.py), so a
    bad template or an unevaluable condition fails its step instead of being retried for ever.
    """


# ---- what a domain operation refuses, and why -----------------------------------------------
# Raised by stores and services; api/errors.py maps each kind to its HTTP answer once, so no
# domain module carries a status code.


class DomainError(Exception):
    """Refused: the message says why, in words an operator can act on."""

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or []


class NotFound(DomainError):
    def __init__(self, what: str, ident: str) -> None:
        super().__init__(f"{what} {ident!r} does not exist")
        self.what, self.ident = what, ident


class Invalid(DomainError):
    """Bad input only the domain can tell (a limit, an unknown list): names the field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}", [{"field": field, "reason": reason}])
        self.field, self.reason = field, reason


class InvalidTemplate(Invalid):
    """A template that does not render: the field, the reason, and where (line and column, from
    1) in the template when it is known."""

    def __init__(self, field: str, reason: str, line: int | None, column: int | None) -> None:
        super().__init__(field, reason)
        if line is not None:
            self.errors[0].update(line=line, column=column)
        self.line, self.column = line, column


class InvalidDefinition(DomainError):
    """A definition (flow, segment) refused with every problem at once, each field and reason."""

    def __init__(self, what: str, errors: list[dict[str, str]], *, count_more: bool = True) -> None:
        shown = "; ".join(f"{e['field']}: {e['reason']}" for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if count_more and len(errors) > 5 else ""
        super().__init__(f"{what}: {shown}{more}", errors)


class NotReady(DomainError):
    """Refused for every problem listed in `errors` (each with field, reason and code)."""


class Conflict(DomainError):
    """Not possible in the current state, now or ever."""


class Locked(DomainError):
    """Not possible while something else holds the thing (e.g. a scheduled campaign)."""


class Unavailable(DomainError):
    """A service it needs (Temporal) could not be reached; nothing was changed."""


class ChannelUnavailable(DomainError):
    """The channel's provider could not take a message now (timeout, 429, 5xx); nothing was
    sent. `retry_after`: seconds the provider asked to wait, when it said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ChannelMisconfigured(DomainError):
    """The channel's provider refused Herald's credentials or settings; nothing was sent."""
