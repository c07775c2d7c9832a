"""The plain-text part of an HTML email, for clients and filters that read text/plain.

Links keep their address ("text (url)") so a text reader can still follow them; block elements
and <br> break lines; scripts and styles say nothing to a reader and are dropped.
"""

import re
from html.parser import HTMLParser

_BLOCKS = frozenset({
    "address", "article", "aside", "blockquote", "dd", "div", "dl", "dt", "fieldset",
    "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr",
    "li", "main", "nav", "ol", "p", "pre", "section", "table", "tbody", "tfoot", "thead", "tr",
    "ul",
})  # fmt: skip
_SILENT = frozenset({"script", "style", "head", "title", "template"})
_WHITESPACE = re.compile(r"\s+")
_BLANK_LINES = re.compile(r"\n{3,}")


class _TextCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # entities arrive unescaped in handle_data
        self.parts: list[str] = []
        self._silent = 0
        self._links: list[tuple[str | None, int]] = []  # (href, index of the link's first part)
        self._newlines = 0  # line breaks since the last text, so adjacent blocks share one

    def _break(self, newlines: int) -> None:
        if newlines > self._newlines:
            self.parts.append("\n" * (newlines - self._newlines))
            self._newlines = newlines

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SILENT:
            self._silent += 1
        elif tag == "br":
            self.parts.append("\n")  # every <br> counts: <br><br> is a blank line
            self._newlines += 1
        elif tag in _BLOCKS:
            self._break(2 if tag == "p" else 1)
        elif tag == "a":
            self._links.append((dict(attrs).get("href"), len(self.parts)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "a":  # <a/> has no text to follow with its address
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SILENT:
            self._silent = max(0, self._silent - 1)
        elif tag in _BLOCKS:
            self._break(2 if tag == "p" else 1)
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            text = " ".join("".join(self.parts[start:]).split())
            if href and not href.startswith("#") and href != text:
                self.parts.append(f" ({href})")

    def handle_data(self, data: str) -> None:
        if not self._silent:
            # Line breaks in the source are layout, not text: only tags break lines.
            self.parts.append(_WHITESPACE.sub(" ", data))
            if data.strip():
                self._newlines = 0


def html_to_text(html: str) -> str:
    collector = _TextCollector()
    collector.feed(html)
    collector.close()
    lines = (line.strip() for line in "".join(collector.parts).split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
