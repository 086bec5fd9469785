"""The one document reader (qbench/text.py) and its users: calibration, held-out task, training."""
import gzip

import pytest

from qbench import text
from qbench.text import DOC_LINE, DOC_SEPARATOR, TextFileError, read_documents, split_documents

SEP = DOC_SEPARATOR


def test_whitespace_rule(tmp_path):
    raw = ("\n\n  indented first line\ninner line  \n\n  \n"     # doc 1: leading/trailing blank lines dropped
           f"{SEP}\n"
           "second\r\nwith CRLF\r\n"                             # CRLF is read as LF
           f"  {SEP} \t\n"                                       # separator with surrounding whitespace
           " \n\t\n"                                             # a blank document: skipped
           f"{SEP}\n{SEP}\n"                                     # an empty document: skipped
           f"third {SEP} keeps the symbol\rand a lone CR"         # inside a line both are text
           f"\n{SEP}")
    (tmp_path / "t.txt").write_bytes(raw.encode("utf-8"))
    expected = ["  indented first line\ninner line  ", "second\nwith CRLF", f"third {SEP} keeps the symbol\rand a lone CR"]
    assert read_documents(tmp_path / "t.txt") == expected
    assert split_documents(raw.replace("\r\n", "\n")) == expected


def test_plain_and_gzip_whatever_the_name(tmp_path):
    docs = ["First line\n\nsecond paragraph\twith tab", "\u00fcn\u00efcode \u2014 \u201cquotes\u201d\n  indented", "x"]
    body = (DOC_LINE.join(docs) + "\n").encode("utf-8")
    (tmp_path / "a.txt").write_bytes(body)
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(body))
    (tmp_path / "gz-without-suffix.txt").write_bytes(gzip.compress(body))
    for name in ("a.txt", "a.txt.gz", "gz-without-suffix.txt"):
        assert read_documents(tmp_path / name) == docs
    (tmp_path / "empty.txt").write_bytes(b"")
    assert read_documents(tmp_path / "empty.txt") == []


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(TextFileError, match="missing.txt"):
        read_documents(tmp_path / "missing.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(TextFileError, match="latin1.txt: not UTF-8"):
        read_documents(tmp_path / "latin1.txt")
    (tmp_path / "cut.txt.gz").write_bytes(gzip.compress(b"some text " * 100)[:30])
    with pytest.raises(TextFileError, match="cut.txt.gz: damaged gzip"):
        read_documents(tmp_path / "cut.txt.gz")


def test_every_reader_is_the_one_reader(tmp_path):
    """Calibration, the held-out task and training read a file to the same documents."""
    from qbench.eval.data import read_heldout
    from qbench.quant import calib
    from qbench.train import corpus

    p = tmp_path / "h.txt.gz"
    p.write_bytes(gzip.compress(f"\n  one\n{SEP}\ntwo  \n\n{SEP}\n\n".encode()))
    expected = ["  one", "two  "]
    assert calib.read_documents is text.read_documents
    assert read_heldout(p) == corpus.read_documents(p) == text.read_documents(p) == expected


def test_training_heldout_windows_use_it(tmp_path, tokenizer):
    import numpy as np

    from qbench.train import train as T

    docs = [f"  document {i}: " + "the quick brown fox jumps over the lazy dog " * 3 for i in range(6)]
    p = tmp_path / "h.txt"
    p.write_text("\n\n" + DOC_LINE.join(docs) + f"\n{SEP}\n \n", encoding="utf-8")
    windows = T.heldout_windows(p, tokenizer, context=15, n_windows=1000)
    stream = T.encode_documents(tokenizer, docs)
    n = len(stream) // 16
    assert np.array_equal(windows, stream[: n * 16].reshape(n, 16))
