"""File helpers shared by the areas (content hashes, writable output folders)."""
import hashlib
import os
from pathlib import Path


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make_writable_dir(folder) -> Path:
    """Create `folder` and prove that a file can be written there; raises OSError otherwise."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-probe-{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()
    return folder
