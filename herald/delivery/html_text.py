"""The plain-text part of an email, derived from its HTML when the template gave none.

Mail clients that show text (and spam filters that compare both parts) get what a reader of the
HTML would see: links as "text (url)" so they stay usable, a line break per block element and
<br>, a blank line between paragraphs, "- " before list items, images as their alt text, no
<script>, <style> or <title>, entities unescaped and whitespace collapsed. Pure: stdlib only.
"""

import re
from dataclasses import dataclass
from html.parser import HTMLParser

__all__ = ["EmailParts", "email_parts", "html_to_text"]

# Elements that start and end on their own line, with a blank line around them...
_PARAGRAPHS = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "dl", "blockquote", "pre"}
)
# ...or just a line break.
_LINES = frozenset(
    {
        "div",
        "tr",
        "li",
        "dt",
        "dd",
        "section",
        "article",
        "header",
        "footer",
        "nav",
        "aside",
        "main",
        "figure",
        "figcaption",
        "address",
        "center",
        "form",
        "fieldset",
        "caption",
        "tbody",
        "thead",
        "tfoot",
        "body",
        "html",
    }
)
_CELLS = frozenset({"td", "th"})
_HIDDEN = frozenset({"script", "style", "title", "template", "noscript", "head"})
_MAX_BREAK = 2  # at most one blank line in a row
_SPACES = re.compile(r"\s+")


class _TextWriter:
    """Collects text with whitespace normalised as it is written: words separated by one
    space, breaks between blocks, never leading or trailing blank lines."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self._breaks = 0  # line breaks owed before the next text
        self._space = False  # a space owed before the next text
        self._line_empty = True

    def text(self, data: str) -> None:
        collapsed = _SPACES.sub(" ", data)
        if collapsed.startswith(" "):
            self._space = True
        words = collapsed.strip()
        if words:
            self._flush()
            self._emit(words)
        if collapsed.endswith(" ") and words:
            self._space = True

    def preformatted(self, data: str) -> None:
        """Text of <pre>: its own spaces and line breaks are kept."""
        if data:
            self._flush()
            self._emit(data)
            self._line_empty = data.endswith("\n")

    def space(self) -> None:
        self._space = True

    def line_break(self, count: int = 1, *, add: bool = False) -> None:
        """Owes `count` breaks (a <br> adds one; block edges ask for at least `count`)."""
        owed = self._breaks + count if add else max(self._breaks, count)
        self._breaks = min(owed, _MAX_BREAK)
        self._space = False

    def _flush(self) -> None:
        if self._breaks and self.parts:
            self.parts.append("\n" * self._breaks)
            self._line_empty = True
        elif self._space and not self._line_empty:
            self.parts.append(" ")
        self._breaks = 0
        self._space = False

    def _emit(self, text: str) -> None:
        self.parts.append(text)
        self._line_empty = False

    def result(self) -> str:
        return "".join(self.parts).strip()


class _HtmlText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # entities arrive unescaped in handle_data
        self.out = _TextWriter()
        self._hidden = 0  # depth inside elements whose content is not text
        self._pre = 0
        self._link: tuple[str, int] | None = None  # (href, index of the link's first part)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN:
            self._hidden += 1
            return
        if tag == "body":
            self._hidden = 0  # a <head> left open ends where the body starts
        if self._hidden:
            return
        if tag == "br":
            self.out.line_break(add=True)
        elif tag == "hr":
            self.out.line_break(_MAX_BREAK)
        elif tag in _PARAGRAPHS:
            self.out.line_break(_MAX_BREAK)
            self._pre += tag == "pre"
        elif tag in _LINES:
            self.out.line_break()
            if tag == "li":
                self.out.text("- ")
        elif tag in _CELLS:
            self.out.space()
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt and alt.strip():
                self.out.text(f" {alt} ")
        elif tag == "a":
            href = (dict(attrs).get("href") or "").strip()
            self._link = (href, len(self.out.parts))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN:  # <script/> has no content to hide
            return
        self.handle_starttag(tag, attrs)
        if tag == "a":
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self._hidden = max(0, self._hidden - 1)
            return
        if self._hidden:
            return
        if tag in _PARAGRAPHS:
            self.out.line_break(_MAX_BREAK)
            if tag == "pre":
                self._pre = max(0, self._pre - 1)
        elif tag in _LINES:
            self.out.line_break()
        elif tag in _CELLS:
            self.out.space()
        elif tag == "a" and self._link is not None:
            href, start = self._link
            self._link = None
            label = "".join(self.out.parts[start:]).strip()
            shown = _shown_url(href)
            if shown and shown != label:
                self.out.text(f" ({shown})" if label else shown)

    def handle_data(self, data: str) -> None:
        if self._hidden:
            return
        if self._pre:
            self.out.preformatted(data)
        else:
            self.out.text(data)


def _shown_url(href: str) -> str | None:
    """The URL a reader should see for a link, or None for links that lead nowhere in text."""
    if not href or href.startswith("#") or href.lower().startswith("javascript:"):
        return None
    if href.lower().startswith("mailto:"):
        return href[len("mailto:") :].split("?", 1)[0] or None
    return href


def html_to_text(html: str) -> str:
    """The readable text of an HTML email (see the module docstring for the rules)."""
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    return parser.out.result()


@dataclass(frozen=True)
class EmailParts:
    html: str | None  # None: the body is plain text, sent as the only part
    text: str


def email_parts(body: str, text: str | None) -> EmailParts:
    """The MIME parts an email body makes, as every email provider (and preview) builds them: a
    body starting with a tag is HTML, sent with the given text part or one derived from it; any
    other body is the text itself, the only part (a text part accompanies HTML only)."""
    if body.lstrip().startswith("<"):
        return EmailParts(html=body, text=text or html_to_text(body))
    return EmailParts(html=None, text=body)
