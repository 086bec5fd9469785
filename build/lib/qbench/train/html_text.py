"""HTML documentation to plain text, with the standard library's HTMLParser only.

`html_to_text(markup, main, drop)` keeps the text inside the elements that match one of the
`main` selectors (the page's content: `main`, `div.body`, `section#main-content`...), leaves
out elements matching a `drop` selector with everything inside them (navigation, summary
tables, trait-implementation lists...), and turns block elements into line and paragraph
breaks. Text in `<pre>` keeps its lines and spaces; all other whitespace is collapsed.

A selector is `tag`, `.class`, `#id` or a combination (`div.body`, `section#main-content`,
`details.toggle.implementors-toggle`): every part given must match.
"""
from __future__ import annotations

import re
from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
ALWAYS_DROP = {"script", "style", "noscript", "nav", "button", "svg", "template", "head", "title", "select",
               "textarea", "math"}
PARAGRAPH = {"p", "div", "section", "article", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "dl", "table",
             "blockquote", "pre", "figure", "figcaption", "details", "summary", "main", "header", "footer",
             "caption", "aside", "hr", "body"}
LINE = {"li", "dt", "dd", "tr", "br"}
CELL = {"td", "th"}
_PRE_MARK = "\x00"          # prefix of lines inside <pre> while the text is assembled


def parse_selector(selector: str) -> tuple[str | None, frozenset[str], str | None]:
    m = re.fullmatch(r"([a-zA-Z][\w-]*)?((?:[.#][\w-]+)*)", selector.strip())
    if not m or not selector.strip():
        raise ValueError(f"bad selector {selector!r}: expected tag, .class, #id or a combination")
    parts = re.findall(r"([.#])([\w-]+)", m.group(2))
    ids = [name for kind, name in parts if kind == "#"]
    return (m.group(1) or None, frozenset(name for kind, name in parts if kind == "."), ids[0] if ids else None)


def _matches(selectors, tag: str, attrs: dict) -> bool:
    if not selectors:
        return False
    classes = set((attrs.get("class") or "").split())
    element_id = attrs.get("id")
    return any((t is None or t == tag) and cls <= classes and (i is None or i == element_id)
               for t, cls, i in selectors)


class _TextParser(HTMLParser):
    def __init__(self, main, drop):
        super().__init__(convert_charrefs=True)
        self.main, self.drop = main, drop
        self.stack: list[tuple[str, bool, bool]] = []    # (tag, started main, started a drop)
        self.in_main = 0 if main else 1
        self.dropping = 0
        self.pre = 0
        self.out: list[str] = []

    def _break(self, text: str) -> None:
        if self.in_main and not self.dropping:
            self.out.append(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        starts_main = bool(self.main) and not self.in_main and _matches(self.main, tag, attrs)
        starts_drop = self.in_main + starts_main > 0 and (tag in ALWAYS_DROP or _matches(self.drop, tag, attrs))
        if tag in VOID:
            if tag in ("br", "hr"):
                self._break("\n" if tag == "br" else "\n\n")
            return
        self.stack.append((tag, starts_main, starts_drop))
        self.in_main += starts_main
        self.dropping += starts_drop
        if tag == "pre":
            self.pre += 1
        self._break("\n\n" if tag in PARAGRAPH else "\n" if tag in LINE else " " if tag in CELL else "")

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if not any(t == tag for t, _, _ in self.stack):
            return                                   # a stray end tag
        while self.stack:
            t, started_main, started_drop = self.stack.pop()
            self._break("\n\n" if t in PARAGRAPH else "\n" if t in LINE else "")
            if t == "pre":
                self.pre -= 1
            self.dropping -= started_drop
            self.in_main -= started_main
            if t == tag:
                break

    def handle_data(self, data):
        if not self.in_main or self.dropping:
            return
        if self.pre:
            self.out.append("\n".join(_PRE_MARK + line for line in data.split("\n")))
        else:
            self.out.append(re.sub(r"\s+", " ", data))


def html_to_text(markup: str, main: tuple[str, ...] = (), drop: tuple[str, ...] = ()) -> str:
    """The text of the `main` elements of an HTML page (the whole page when `main` is empty),
    without the `drop` elements; paragraphs separated by blank lines."""
    parser = _TextParser([parse_selector(s) for s in main], [parse_selector(s) for s in drop])
    parser.feed(markup)
    parser.close()
    lines = []
    for line in "".join(parser.out).split("\n"):
        if _PRE_MARK in line:                        # a line of a <pre> block: keep its indentation
            lines.append(line.replace(_PRE_MARK, "").rstrip())
        else:
            lines.append(line.strip())
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")
