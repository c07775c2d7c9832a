"""SMS segment counts against the values carriers bill (GSM 03.38, 160/153 and 70/67)."""

import pytest

from herald.delivery.sms_segments import GSM7_BASIC, GSM7_EXTENSION, SmsSegments, sms_segments

EMOJI = "\N{GRINNING FACE}"  # beyond the BMP: two UTF-16 code units
NON_GSM = "ą"  # Polish a-ogonek: in the BMP, not in GSM-7


@pytest.mark.parametrize(
    ("length", "segments"), [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)]
)
def test_plain_gsm_text_fits_160_then_153_per_part(length: int, segments: int) -> None:
    assert sms_segments("a" * length) == SmsSegments("GSM-7", length, length, segments)


def test_empty_text_is_billed_as_one_message() -> None:
    assert sms_segments("") == SmsSegments("GSM-7", 0, 0, 1)


def test_an_extension_character_costs_two_septets_and_can_push_past_160() -> None:
    assert sms_segments("a" * 158 + "€") == SmsSegments("GSM-7", 159, 160, 1)
    assert sms_segments("a" * 159 + "€") == SmsSegments("GSM-7", 160, 161, 2)


@pytest.mark.parametrize("char", sorted(GSM7_EXTENSION))
def test_every_extension_character_stays_gsm_at_two_septets(char: str) -> None:
    assert sms_segments(char) == SmsSegments("GSM-7", 1, 2, 1)


def test_an_escape_pair_is_not_split_across_parts() -> None:
    # 306 septets would be 2 parts, but the brace would straddle septets 153 and 154.
    assert sms_segments("a" * 152 + "{" + "a" * 152).segments == 3
    assert sms_segments("a" * 151 + "{" + "a" * 153).segments == 2


def test_gsm_basic_set_is_the_127_characters_besides_the_escape() -> None:
    assert len(GSM7_BASIC) == 127
    assert not GSM7_BASIC & GSM7_EXTENSION
    assert sms_segments("Ça coûte 5€ à Zürich, ÑÖ§¿¡ΔΩ").encoding == "UCS-2"  # û is not GSM
    assert sms_segments("Ça coute 5€ à Zürich, ÑÖ§¿¡ΔΩ").encoding == "GSM-7"


def test_a_curly_quote_makes_the_whole_text_ucs2() -> None:
    assert sms_segments("it\N{RIGHT SINGLE QUOTATION MARK}s " + "a" * 100).encoding == "UCS-2"


@pytest.mark.parametrize(
    ("length", "segments"), [(70, 1), (71, 2), (134, 2), (135, 3), (201, 3), (202, 4)]
)
def test_ucs2_text_fits_70_then_67_per_part(length: int, segments: int) -> None:
    assert sms_segments(NON_GSM * length) == SmsSegments("UCS-2", length, length, segments)


def test_an_emoji_costs_two_code_units() -> None:
    assert sms_segments(EMOJI + "a" * 68) == SmsSegments("UCS-2", 69, 70, 1)
    assert sms_segments(EMOJI + "a" * 69) == SmsSegments("UCS-2", 70, 71, 2)


def test_a_surrogate_pair_is_not_split_across_parts() -> None:
    # 134 code units would be 2 parts, but the emoji would straddle units 67 and 68.
    assert sms_segments("a" * 66 + EMOJI + "a" * 66).segments == 3
    assert sms_segments("a" * 65 + EMOJI + "a" * 67).segments == 2
