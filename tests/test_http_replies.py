"""Retry-After as providers send it: seconds, an HTTP date, or nonsense."""

from datetime import UTC, datetime
from email.utils import format_datetime

from herald.delivery.providers.http_replies import retry_after_seconds

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def test_seconds_are_taken_as_they_are_and_never_negative() -> None:
    assert retry_after_seconds("7") == 7
    assert retry_after_seconds(" 1.5 ") == 1.5
    assert retry_after_seconds("-3") == 0


def test_an_http_date_is_the_seconds_until_then() -> None:
    later = datetime(2025, 3, 1, 12, 2, 0, tzinfo=UTC)
    header = format_datetime(later, usegmt=True)

    assert retry_after_seconds(header, now=NOW) == 120
    assert retry_after_seconds(header, now=later) == 0  # past dates: no wait


def test_no_header_or_an_unreadable_one_is_none() -> None:
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("") is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("inf") is None
    assert retry_after_seconds("Sat, 01 Mar 2025 12:02:00") is None  # an HTTP date has a zone
