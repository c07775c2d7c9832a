"""Normalising identifiers: one person, one spelling, so that one person maps to one profile."""

import pytest

from herald.profiles.normalize import normalize_email, normalize_phone, normalize_timezone


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("ada@example.com", "ada@example.com"),
        ("  Ada.Lovelace@Example.COM ", "ada.lovelace@example.com"),
        ("ADA+news@EXAMPLE.com", "ada+news@example.com"),
        # An internationalised domain, spelled in Unicode or in punycode, is one address.
        ("jose@BÜCHER.de", "jose@bücher.de"),
        ("jose@xn--bcher-kva.de", "jose@bücher.de"),
    ],
)
def test_email_is_trimmed_and_lower_cased(raw, normalized):
    assert normalize_email(raw) == normalized


@pytest.mark.parametrize(
    "raw",
    ["", "ada@", "no-at-sign", "a b@example.com", "ada@example", "Ada <ada@example.com>"],
)
def test_malformed_email_is_refused(raw):
    with pytest.raises(ValueError, match="not a valid email address"):
        normalize_email(raw)


def test_email_deliverability_is_not_checked_at_ingest():
    # No DNS lookup: a syntactically valid address on a domain without MX records is kept.
    assert normalize_email("someone@no-such-domain-herald.example") == (
        "someone@no-such-domain-herald.example"
    )


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("+31612345678", "+31612345678"),
        ("+31 6 1234 5678", "+31612345678"),
        (" (+1) 650-253-0000 ", "+16502530000"),
        ("+44 20 7946 0958", "+442079460958"),
        ("+48 512 345 678", "+48512345678"),
    ],
)
def test_phone_is_formatted_as_e164(raw, e164):
    assert normalize_phone(raw) == e164


@pytest.mark.parametrize(
    "raw",
    [
        "0612345678",  # no country code: refused, not guessed
        "+1 555",  # too short to be a number
        "+999 1234567",  # no such country code
        "+31 6 1234",  # right country, wrong length
        "call me",
        "",
    ],
)
def test_phone_that_is_not_a_valid_international_number_is_refused(raw):
    with pytest.raises(ValueError, match="not a valid phone number"):
        normalize_phone(raw)


@pytest.mark.parametrize("zone", ["UTC", "Europe/Amsterdam", "America/New_York", "Asia/Kolkata"])
def test_iana_timezones_are_accepted_as_sent(zone):
    assert normalize_timezone(zone) == zone


@pytest.mark.parametrize(
    "zone",
    [
        "Mars/Base",
        "",
        " UTC",
        "CEST",
        "+02:00",
        # A region is a directory of zones, not a zone.
        "Europe",
        "America",
        # Paths are not zone names.
        "/etc/localtime",
        "../../etc/passwd",
        "Europe/Amsterdam\x00",
    ],
)
def test_unknown_timezone_is_refused_with_a_value_error(zone):
    with pytest.raises(ValueError, match="unknown IANA timezone"):
        normalize_timezone(zone)
