"""The email bytes the SMTP provider writes, read back by the stdlib's parser: every header
and part says what was put in, whatever the text holds, and the wire format stays inside
RFC 5322 (CRLF only, lines of at most 998 octets, ASCII unless the message goes SMTPUTF8)."""

from email import message_from_bytes
from email.policy import default

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herald.delivery.providers import mime

# Header text as people write it: any printable character, single spaces, no edge spaces.
# (Folding may turn a run of spaces into one, as every mail reader does.)
words = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp")), min_size=1, max_size=30
)
header_text = st.lists(words, min_size=1, max_size=12).map(" ".join)
# Bodies hold anything a template can produce: control characters, long lines, dots and
# dashes at line starts, CR and LF in every combination, text that looks like a boundary.
body_chars = st.characters(blacklist_categories=("Cs",))
body_text = st.lists(
    st.one_of(
        st.text(body_chars, max_size=40),
        st.sampled_from(["\r\n", "\n", "\r", ".", "..\n", "--=_", "=_0", "From ", "=3D", "\t "]),
        st.integers(990, 1100).map(lambda n: "x" * n),
    ),
    max_size=25,
).map("".join)


def as_read(text: str) -> str:
    """Text with its line ends as \\n: they are a transport matter (the stdlib's parser leaves
    a 7bit part's CRLF in, every mail reader shows a line end)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def as_sent(text: str) -> str:
    """What a part holds: the text, ending with a line end (as the stdlib writes parts)."""
    text = as_read(text)
    return text if text.endswith("\n") else text + "\n"


def wire_rules(data: bytes, utf8: bool = False) -> None:
    assert utf8 or data.isascii()
    assert b"\r" not in data.replace(b"\r\n", b"") and b"\n" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    head = data.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert all(len(line) <= 76 for line in head if b"=?" in line)  # RFC 2047 section 2


def composed(subject: str, body: str, text: str | None = None, **extra: str):
    headers = [("From", "Shop <shop@herald.test>"), ("To", "ada@example.com")]
    headers += [("Subject", subject), *extra.items()]
    data = mime.compose(headers, body, text)
    wire_rules(data)
    return message_from_bytes(data, policy=default)


# derandomize: the same examples on every run, so the suite stays deterministic.
EXAMPLES = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


@EXAMPLES
@given(subject=header_text, text=body_text.map("Hi ".__add__))  # one starting with a tag is HTML
def test_a_text_email_reads_back_as_written(subject, text):
    message = composed(subject, text)
    assert message["Subject"] == subject
    assert message.get_content_type() == "text/plain"
    assert as_read(message.get_content()) == as_sent(text)


@EXAMPLES
@given(subject=header_text, html=body_text, text=body_text, name=header_text)
def test_an_html_email_reads_back_as_its_two_alternatives(subject, html, text, name):
    message = composed(subject, "<p>" + html, text or None, **{"X-Campaign": name})
    assert message["Subject"] == subject
    assert message["X-Campaign"] == name
    assert message.get_content_type() == "multipart/alternative"
    plain, rich = message.iter_parts()
    assert (plain.get_content_type(), rich.get_content_type()) == ("text/plain", "text/html")
    assert as_read(rich.get_content()) == as_sent("<p>" + html)
    if text:
        assert as_read(plain.get_content()) == as_sent(text)


def test_ascii_with_short_lines_goes_as_7bit_and_the_rest_is_encoded():
    def encodings(body: str) -> list[str]:
        message = composed("Hi", body, "plain text")
        return [part["Content-Transfer-Encoding"] for part in message.iter_parts()]

    assert encodings("<p>20% off</p>") == ["7bit", "7bit"]
    assert encodings("<p>" + "a" * 1200 + "</p>") == ["7bit", "quoted-printable"]
    assert encodings("<p>Grüße aus Köln: the sale is on</p>") == ["7bit", "quoted-printable"]
    assert encodings("<p>" + "Привет мир " * 20 + "</p>") == ["7bit", "base64"]


def test_a_long_header_is_folded_and_an_emoji_subject_is_an_encoded_word():
    unsubscribe = "<https://herald.test/u/" + "t" * 120 + ">, <mailto:unsub@herald.test?subject=u>"
    data = mime.compose(
        [("Subject", "Sale ☀ today"), ("List-Unsubscribe", unsubscribe)], "hello", None
    )
    wire_rules(data)
    head = data.split(b"\r\n\r\n")[0].decode()
    assert "=?utf-8?" in head and "☀" not in head
    assert "t" * 120 in head  # URLs stay as they are: receivers read them from the raw header
    message = message_from_bytes(data, policy=default)
    assert message["Subject"] == "Sale ☀ today"
    assert message["List-Unsubscribe"] == unsubscribe


def test_utf8_messages_keep_their_headers_in_utf8():
    data = mime.compose([("To", "jürgen@bücher.example"), ("Subject", "Grüße")], "hi", None, True)
    wire_rules(data, utf8=True)
    assert "To: jürgen@bücher.example\r\n".encode() in data


def test_a_long_header_name_keeps_its_encoded_words_inside_76_characters():
    value = "Grüße aus Köln " * 12
    for name in ("X-Campaign", "X-Herald-Campaign-Name", "X-" + "N" * 40):
        data = mime.compose([(name, value)], "hi", None)
        wire_rules(data)
        assert message_from_bytes(data, policy=default)[name] == value


@pytest.mark.parametrize(
    "value", ["news\r\nBcc: all@example.com", "a\nb", "a\rb", "a\vb", "a\x00b", "a\u2028b"]
)
def test_a_header_holding_a_line_break_is_refused(value):
    with pytest.raises(ValueError, match="line break"):
        mime.compose([("List-Id", value)], "hello", None)
