"""File helpers shared by the areas (content hashes, writable output folders, atomic writes)."""
import hashlib
import os
from pathlib import Path


def update_digest(digest, path):
    """Feed a file's bytes into a hashlib digest, in chunks; returns the digest."""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest


def file_sha256(path) -> str:
    return update_digest(hashlib.sha256(), path).hexdigest()


def make_writable_dir(folder) -> Path:
    """Create `folder` and prove that a file can be written there; raises OSError otherwise."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-probe-{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()
    return folder


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` so that readers see the old file or the whole new one, never a part."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically: tmp file in the same folder, fsync, rename, fsync of the folder."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_yaml(path):
    """The YAML document of a file; ValueError with a one-line message (line, column and problem)
    when the file is not UTF-8 text or not valid YAML (callers name the file and raise their error)."""
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ValueError(f"not valid YAML: {where}{err.problem}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"not valid YAML: {' '.join(str(err).split())}") from None
