"""Errors every layer shares."""


class PermanentError(Exception):
    """An input no retry can fix: the same call fails the same way on every attempt.

    Activities that raise one fail at once, non-retryable (herald/core/activity_errors.py), so a
    bad template or an unevaluable condition fails its step instead of being retried for ever.
    """
