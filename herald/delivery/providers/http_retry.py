"""How long an HTTP provider asked us to wait: the Retry-After header (RFC 9110 section 10.2.3).

It is either a number of seconds or an HTTP date; the send path takes the seconds as the
earliest moment of its next attempt (ProviderUnavailable.retry_after).
"""

import math
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime


def retry_after_seconds(
    headers: Mapping[str, str], *, clock: Callable[[], float] = time.time
) -> float | None:
    """Seconds to wait, never negative; None when the header is absent or unreadable."""
    value = headers.get("retry-after") or headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is always GMT; a date without a zone is garbage
        return None
    return max(0.0, when.timestamp() - clock())
