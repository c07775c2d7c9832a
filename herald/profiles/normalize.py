"""Normalising the identifiers people send us, so that one person maps to one profile."""

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import phonenumbers
from email_validator import EmailNotValidError, validate_email


def normalize_email(value: str) -> str:
    """Lower-cased, syntax-checked address; deliverability (DNS) is not checked at ingest."""
    try:
        result = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address: {exc}") from None
    return result.normalized.lower()


def normalize_phone(value: str) -> str:
    """E.164 (+31612345678). A number without a country code is refused, not guessed."""
    try:
        number = phonenumbers.parse(value.strip(), None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(
            f"not a valid phone number (use E.164, e.g. +31612345678): {exc}"
        ) from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError("not a valid phone number for its country")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


_ZONES: frozenset[str] | None = None


def normalize_timezone(value: str) -> str:
    global _ZONES
    if _ZONES is None:
        _ZONES = frozenset(available_timezones())
    if value not in _ZONES:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Europe" is a directory
            raise ValueError(f"unknown IANA timezone {value!r}") from None
    return value
