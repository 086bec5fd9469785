"""A corpus as one .tar.xz, to carry it to a machine that cannot build it (a GPU host reached
only through a copy of the working tree, 64 MiB per call), and tokenized there.

    qbench data bundle --corpus DIR --out corpus.tar.xz [--part-mib 60]
    qbench data unbundle corpus.tar.xz [corpus.tar.xz.part01 ...] --out DIR
        (unpacking needs only the standard library, encoding train.txt into DIR/train.tokens.u16
        tokenizers + numpy; the commands: qbench/train/commands.py)

The bundle holds the split files, manifest.json, licenses/ and tokenizer/ (the token file is
rebuilt there, byte-identical: the encoding is deterministic). With --part-mib the archive is
cut into parts of at most that size (part00, part01, ...); `<out>.json` lists them with the
sha256 of the whole archive, which unbundle checks before unpacking.
"""
from __future__ import annotations

import hashlib
import io
import json
import lzma
import tarfile
import time
from pathlib import Path

from .corpus import SPLITS, CorpusError

CORPUS_FILES = tuple(f"{s}.txt" for s in SPLITS) + ("manifest.json",)
CORPUS_FOLDERS = ("tokenizer", "licenses")


def _members(corpus_dir: Path) -> list[Path]:
    missing = [name for name in CORPUS_FILES + ("tokenizer",) if not (corpus_dir / name).exists()]
    if missing:
        raise CorpusError(f"{corpus_dir} is not a built corpus: {', '.join(missing)} missing "
                          f"(`qbench data corpus` builds one)")
    files = [corpus_dir / name for name in CORPUS_FILES]
    for folder in CORPUS_FOLDERS:
        files += sorted(p for p in (corpus_dir / folder).rglob("*") if p.is_file())
    return files


def write_bundle(corpus_dir, out, part_mib: float | None = None, preset: int = 9) -> dict:
    """Write corpus_dir's files as an xz-compressed tar (fixed member order, times and owners,
    so the same corpus gives the same bytes); returns the description written to `<out>.json`."""
    corpus_dir, out = Path(corpus_dir), Path(out)
    if part_mib is not None and not part_mib > 0:
        raise CorpusError(f"--part-mib must be a size in MiB > 0, got {part_mib}")
    started = time.time()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _members(corpus_dir):
            info = tarfile.TarInfo(path.relative_to(corpus_dir).as_posix())
            data = path.read_bytes()
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    packed = lzma.compress(raw.getvalue(), preset=preset | lzma.PRESET_EXTREME)
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = [out]
    if part_mib:
        size = int(part_mib * 2**20)
        parts = [out.with_name(f"{out.name}.part{i:02d}") for i in range(-(-len(packed) // size))]
        for i, part in enumerate(parts):
            part.write_bytes(packed[i * size:(i + 1) * size])
    else:
        out.write_bytes(packed)
    described = {"corpus": str(corpus_dir), "sha256": hashlib.sha256(packed).hexdigest(), "bytes": len(packed),
                 "uncompressed_bytes": raw.tell(), "parts": [p.name for p in parts],
                 "xz_preset": f"{preset}e", "seconds": round(time.time() - started, 1),
                 "manifest_sha256": hashlib.sha256((corpus_dir / "manifest.json").read_bytes()).hexdigest()}
    Path(f"{out}.json").write_text(json.dumps(described, indent=2) + "\n")
    return described


def read_bundle(paths: list, out_dir, tokenize: bool = True) -> dict:
    """Join the parts (in the order given), check them against `<bundle>.json` where it lies
    beside the first, unpack into out_dir and, with tokenize, encode train.txt with the bundled
    tokenizer (the corpus's train.tokens.u16). Returns what was done."""
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.is_file():
            raise CorpusError(f"bundle part {p} not found")
    packed = b"".join(p.read_bytes() for p in paths)
    name = paths[0].name.split(".part")[0]
    description = paths[0].with_name(f"{name}.json")
    digest = hashlib.sha256(packed).hexdigest()
    if description.is_file():
        expected = json.loads(description.read_text())
        if expected["sha256"] != digest:
            raise CorpusError(f"bundle {paths[0]} ({len(paths)} part(s)) does not match {description}: sha256 "
                              f"{digest[:16]}... instead of {expected['sha256'][:16]}... (a part missing or out of order?)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(packed)), mode="r:") as tar:
        for member in tar.getmembers():
            target = Path(member.name)
            if not member.isfile() or target.is_absolute() or ".." in target.parts:
                raise CorpusError(f"bundle {paths[0]}: unexpected member {member.name!r}")
        tar.extractall(out_dir, filter="data")
    done = {"out": str(out_dir), "sha256": digest, "unpack_seconds": round(time.time() - started, 1)}
    if tokenize:
        from .data import corpus_token_file, read_sidecar

        started = time.time()
        token_file = corpus_token_file(out_dir, out_dir / "tokenizer")
        done.update(tokens=str(token_file), token_count=read_sidecar(token_file)["tokens"],
                    tokenize_seconds=round(time.time() - started, 1))
    return done
