"""The one reader of document files: held-out perplexity text, calibration text, corpus splits.

A document file is UTF-8 text, plain or gzip-compressed (recognised by the gzip magic bytes,
whatever the file name), in which a line holding only U+241E (SYMBOL FOR RECORD SEPARATOR)
separates two documents. The whitespace rule, the same for every reader of such files:

* line endings are "\\n" or "\\r\\n" (read as "\\n"); a lone "\\r" is text;
* a separator line is a line that is U+241E once surrounding whitespace is removed;
* a document is the lines between two separators (or the start / end of the file) without its
  leading and trailing blank lines (a blank line is empty or holds only whitespace); every other
  character is kept as it is, indentation of the first line and trailing spaces included;
* documents that are empty (or only whitespace) are skipped.

`qbench data corpus` writes split files that this rule reads back unchanged (its documents have
no leading or trailing blank lines and never contain U+241E).
"""
from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path

from .errors import QBenchError

DOC_SEPARATOR = "\u241e"                 # SYMBOL FOR RECORD SEPARATOR, alone on its line
DOC_LINE = f"\n{DOC_SEPARATOR}\n"        # what a writer puts between two documents
_SEPARATOR_LINE = re.compile(rf"^[^\S\n]*{DOC_SEPARATOR}[^\S\n]*$", re.MULTILINE)


class TextFileError(QBenchError, ValueError):
    """A document file that cannot be read (missing or unreadable, damaged gzip data, not UTF-8)."""


def read_text(path) -> str:
    """The text of a plain or gzip UTF-8 file, with "\\r\\n" line endings read as "\\n"."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise TextFileError(f"cannot read text file {path}: {err.strerror or err}") from None
    gz = raw[:2] == b"\x1f\x8b"
    if gz:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise TextFileError(f"{path}: damaged gzip data ({err})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise TextFileError(f"{path}: not UTF-8 text (byte {err.start} of the "
                            f"{'decompressed ' if gz else ''}data: {err.reason})") from None
    return text.replace("\r\n", "\n")


def split_documents(text: str) -> list[str]:
    """The documents of a document file's text, by the rule of the module docstring."""
    docs = []
    for part in _SEPARATOR_LINE.split(text):
        lines = part.split("\n")
        start, end = 0, len(lines)
        while start < end and not lines[start].strip():
            start += 1
        while end > start and not lines[end - 1].strip():
            end -= 1
        if start < end:
            docs.append("\n".join(lines[start:end]))
    return docs


def read_documents(path) -> list[str]:
    """The documents of a document file (plain or gzip), by the rule of the module docstring."""
    return split_documents(read_text(path))
