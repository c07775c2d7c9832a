"""An email as the bytes SMTP carries: headers, and a text part or text + HTML alternatives.

The stdlib's EmailMessage builds a header object per header and re-parses every value it
folds: at a thousand messages a second it cost more CPU than the rest of the send path
together. The messages Herald sends have one shape, so this writes them directly, and hands
the stdlib only what needs its care: a header that is not short printable ASCII (an encoded
word for an emoji subject, folding for a long List-Unsubscribe). Bodies are UTF-8, sent as
7bit when they are ASCII with short lines, else quoted-printable or base64, whichever is
shorter, as the stdlib would choose.
"""

import base64
import binascii
import re
import secrets
from email.policy import SMTP as SMTP_POLICY
from email.policy import SMTPUTF8 as SMTPUTF8_POLICY

from herald.delivery.html_text import email_parts

_MAX_LINE = 998  # RFC 5322 2.1.1, without the CRLF
_FOLD_AT = 78  # RFC 5322's advised line length: a longer header is folded
_WORD_BYTES = 39  # per encoded word: 52 base64 characters, a 64-character word
_WORD_LINE = 76  # RFC 2047 section 2: a line holding an encoded word is at most 76 long
_WORD_FRAME = len("=?utf-8?b??=")
# Printable ASCII and tab: a header value that needs neither encoding nor care.
_PLAIN_HEADER = re.compile(r"[\t\x20-\x7e]*")
# What no header value may hold: anything str.splitlines() breaks at, and control characters
# other than tab (RFC 5322 forbids generating them).
_BREAKS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")
# What a 7bit body may not hold: non-ASCII, NUL and control characters other than tab.
_NOT_7BIT = re.compile(r"[^\t\n\x20-\x7e]")


def header(name: str, value: str, utf8: bool = False) -> str:
    """One header line (CRLF-terminated). A value holding a line break raises ValueError: it
    would start a header of its own (header injection). `utf8`: the message goes with
    SMTPUTF8 (an address is not ASCII), so headers carry UTF-8 as it is."""
    if _BREAKS.search(value):
        raise ValueError(f"header {name} holds a line break or a control character")
    if _PLAIN_HEADER.fullmatch(value):
        if len(name) + 2 + len(value) <= _FOLD_AT:
            return f"{name}: {value}\r\n"
        return _folded(name, value)
    if _free_text(name) and not utf8 and _first_word_bytes(name) >= 12:
        return _encoded_words(name, value)
    policy = SMTPUTF8_POLICY if utf8 else SMTP_POLICY
    # A header object, not policy.fold(name, value): that passes a short value through as it
    # is, UTF-8 and all, taking it for one read off the wire.
    return str(policy.header_factory(name, value).fold(policy=policy))


def _folded(name: str, value: str) -> str:
    """A long printable-ASCII value folded at its spaces, never encoded: receivers read
    List-Unsubscribe's URLs from the raw header (the stdlib's folder turns an unbreakable URL
    into encoded words). A word too long for one line gets a line of its own, up to 998."""
    lines, line = [], f"{name}:"
    for word in value.split(" "):
        if len(line) + 1 + len(word) > _FOLD_AT and line.strip() and line != f"{name}:":
            lines.append(line)
            line = ""
        line += " " + word
    lines.append(line)
    if max(map(len, lines)) > _MAX_LINE:
        raise ValueError(f"header {name} has a word longer than a line may be")
    return "\r\n".join(lines) + "\r\n"


def _first_word_bytes(name: str) -> int:
    """How many UTF-8 bytes the first encoded word can hold on the header's own line."""
    return (_WORD_LINE - len(name) - 2 - _WORD_FRAME) // 4 * 3


def _free_text(name: str) -> bool:
    """Subject and X- headers hold any text; others (addresses, List-Id's <id>) have a syntax
    an encoded word must not swallow, so the stdlib encodes them."""
    lower = name.lower()
    return lower == "subject" or lower.startswith("x-")


def _encoded_words(name: str, value: str) -> str:
    """An unstructured header as RFC 2047 encoded words, one per folded line, each holding
    whole characters. The spaces travel inside the words: the stdlib's folder puts some between
    words, where decoders drop them ("Sale ☀ ☀" would read "Sale ☀☀")."""
    # The first word shares its line with the name: it holds what fits there.
    words, word, size, limit = [], "", 0, _first_word_bytes(name)
    for char in value:
        length = len(char.encode())
        if size + length > limit:
            words.append(word)
            word, size, limit = "", 0, _WORD_BYTES
        word += char
        size += length
    words.append(word)
    encoded = (f"=?utf-8?b?{base64.b64encode(w.encode()).decode('ascii')}?=" for w in words)
    return f"{name}: " + "\r\n ".join(encoded) + "\r\n"


def _lines(text: str) -> list[str]:
    """The text's lines, whatever its line ends; a final line end makes no empty last line."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def _part(subtype: str, text: str) -> str:
    """A text/<subtype> part's headers and body. The body ends with a line end, as the
    stdlib writes one, whichever the encoding."""
    lines = _lines(text)
    if not _NOT_7BIT.search(text) and max(map(len, lines), default=0) <= _MAX_LINE:
        encoding, body = "7bit", "".join(line + "\r\n" for line in lines) or "\r\n"
    else:
        data = "".join(line + "\n" for line in lines).encode()
        qp = binascii.b2a_qp(data, istext=True).decode("ascii")
        b64 = base64.encodebytes(data).decode("ascii")
        encoding, body = ("base64", b64) if len(b64) < len(qp) else ("quoted-printable", qp)
        body = body.replace("\n", "\r\n")
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {encoding}\r\n\r\n{body}"
    )


def compose(
    headers: list[tuple[str, str]], body: str, text: str | None, utf8: bool = False
) -> bytes:
    """The message: `headers` in order, then MIME-Version and the body's parts (see
    html_text.email_parts). Raises ValueError for a header that would break the message."""
    head = "".join(header(n, v, utf8) for n, v in headers) + "MIME-Version: 1.0\r\n"
    parts = email_parts(body, text)
    if parts.html is None:
        return (head + _part("plain", parts.text)).encode()
    plain, html = _part("plain", parts.text), _part("html", parts.html)
    boundary = "=_" + secrets.token_hex(16)
    while boundary in plain or boundary in html:  # a 7bit part may hold anything
        boundary = "=_" + secrets.token_hex(16)
    return (
        f'{head}Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\n{plain}\r\n--{boundary}\r\n{html}\r\n--{boundary}--\r\n"
    ).encode()
