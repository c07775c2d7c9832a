"""How many SMS segments a text costs, counted the way carriers (and Twilio) bill it.

A text that fits the GSM 03.38 alphabet travels as 7-bit septets: 160 in a single message, 153
per part once it is split (the concatenation header takes the rest). The extension table's
characters cost two septets (an escape and the character), and a part never ends between the
two. Any other character sends the whole text as UCS-2: 16-bit UTF-16 code units, 70 single or
67 per part, and a part never ends inside a surrogate pair (an emoji costs two units).

Twilio's optional "Smart Encoding" (replacing look-alikes such as curly quotes) and national
language shift tables are off by default and not modelled: a curly quote makes the text UCS-2.
"""

from dataclasses import dataclass
from typing import Literal

from models.enums import Channel

Encoding = Literal["GSM-7", "UCS-2"]

# The GSM 03.38 basic character set: every position except 0x1B, the escape to the extension.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# The extension table: each of these is sent as escape + character, two septets.
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

# The channels whose delivery rows record segments (WhatsApp is billed per conversation).
SEGMENTED_CHANNELS = frozenset({Channel.sms})

GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67


@dataclass(frozen=True)
class SmsSegments:
    encoding: Encoding
    characters: int  # code points in the text, as a person counts them
    units: int  # what the limits count: septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int  # messages billed; an empty text still counts as one


def sms_segments(text: str) -> SmsSegments:
    if all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text):
        costs = [2 if ch in GSM7_EXTENSION else 1 for ch in text]
        return SmsSegments("GSM-7", len(text), sum(costs), _parts(costs, GSM7_SINGLE, GSM7_PART))
    costs = [2 if ord(ch) > 0xFFFF else 1 for ch in text]  # beyond the BMP: a surrogate pair
    return SmsSegments("UCS-2", len(text), sum(costs), _parts(costs, UCS2_SINGLE, UCS2_PART))


def _parts(costs: list[int], single: int, part: int) -> int:
    """Parts needed when no character (escape pair, surrogate pair) may straddle two parts."""
    if sum(costs) <= single:
        return 1  # also for "": providers bill an empty body as one message
    parts, used = 1, 0
    for cost in costs:
        if used + cost > part:
            parts, used = parts + 1, 0
        used += cost
    return parts
