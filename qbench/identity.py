"""What a cell's numbers depend on, stated once: the code areas on the numerical path, each with a
version and the list of its source files, and the runtime switches that change numbers.

A cell key (qbench/sweep/cells.py) hashes, among its inputs, the versions of the areas the cell
runs through (`cell_code_versions`) and `runtime_identity()`. The versions are bumped by hand;
`qbench/identity.lock.json` records, per area, the version and a hash of each file's code (its
syntax tree without docstrings and comments), and tests/test_identity.py fails when a listed
file's code changed while its area's version did not. Then either

  * bump the area's version below (the change can move numbers: old cells are recomputed), then
    `python -m qbench.identity refresh --reason "gptq: act-order fix"`, or
  * refresh the lock without a bump, stating why the change cannot move a number:
    `python -m qbench.identity refresh --reason "rename of a local variable"`.

Docstring and comment edits change no hash. A listed file that is missing is an error, and
every module under the numerical folders must be in an area or in NOT_NUMERICAL (so a new or
renamed file cannot drop out of the keys silently).
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .errors import QBenchError

PACKAGE = Path(__file__).resolve().parent
LOCK_FILE = PACKAGE / "identity.lock.json"


@dataclass(frozen=True)
class Area:
    version: str
    files: tuple[str, ...]      # relative to the qbench package
    what: str


# Areas every cell runs through.
COMMON = {
    "model": Area("3", ("model/modeling.py", "model/config.py", "model/loading.py", "model/hf_attention.py"),
                  "models (ours; transformers' classes with attention routed to qbench) and their loading"),
    "attention": Area("3", ("attention/__init__.py", "attention/kinds.py", "attention/reference.py",
                            "attention/triton_softpick.py"),
                      "attention dispatch, the registry of kinds, reference normalisers and the softpick kernel"),
    "scorer": Area("5", ("eval/adapter.py", "eval/runner.py", "eval/metrics.py", "eval/items.py", "eval/bootstrap.py"),
                   "lm-eval integration, the fast scorer, per-item results and the stderr bootstrap"),
    "cell": Area("3", ("sweep/compute.py",), "one cell's computation: copy, quantize, evaluate (with per-item results)"),
}
# Areas of the quantization recipes: a recipe uses quant.core, its weight method's area, one per
# section it has (activation, kv_cache, attention, the transform's type) and calibration if it calibrates.
QUANT = {
    "quant.core": Area("3", ("quant/core.py", "quant/base.py"),
                       "stages, layer selection, measurement, probe batch and calibration-forward helpers"),
    "calibration": Area("2", ("quant/calib.py", "text.py"), "calibration batches from held-out text (one document reader)"),
    "quant.rtn": Area("2", ("quant/rtn.py",), "round-to-nearest grid (integer zero point, or float offset: GGUF Q4_1)"),
    "quant.gptq": Area("1", ("quant/gptq.py", "quant/rtn.py"), "GPTQ (on rtn's grid)"),
    "quant.hqq": Area("1", ("quant/hqq.py",), "HQQ through the hqq library"),
    "quant.bnb": Area("1", ("quant/bnb.py",), "bitsandbytes"),
    "quant.quanto": Area("2", ("quant/quanto.py",), "optimum-quanto (weights, static activations)"),
    "quant.fp8": Area("1", ("quant/formats.py",), "FP8 E4M3 weights"),
    "quant.mxfp4": Area("1", ("quant/formats.py",), "MXFP4 weights (blocks of 32, E8M0 scales)"),
    "quant.nvfp4": Area("1", ("quant/formats.py",), "NVFP4 weights (blocks of 16, E4M3 + FP32 scales)"),
    "quant.activation": Area("1", ("quant/activation.py", "quant/formats.py", "quant/rtn.py"),
                             "dynamic activation fake quantization"),
    "quant.kv_cache": Area("1", ("quant/attn.py", "quant/formats.py"), "K/V fake quantization as attention reads them"),
    "quant.attention": Area("1", ("quant/attn.py", "quant/formats.py"), "attention score / probability quantization"),
    "quant.smoothquant": Area("1", ("quant/smoothquant.py", "quant/layout.py"), "SmoothQuant scale migration"),
    "quant.rotation": Area("1", ("quant/rotation.py", "quant/layout.py", "quant/formats.py"),
                           "QuaRot-style Hadamard rotation"),
}
AREAS = {**COMMON, **QUANT}

# Folders whose modules are on the numerical path unless named here (with the reason).
NUMERICAL_FOLDERS = ("model", "attention", "eval", "quant")
NOT_NUMERICAL = {
    "model/__init__.py": "re-exports and Auto-class registration",
    "model/pair.py": "checks that arms fit together (no numbers)",
    "model/commands.py": "qbench info / qbench data models",
    "model/real.py": "fetches real models by name (their content hash is in the key)",
    "quant/__init__.py": "re-exports",
    "quant/recipe.py": "parses recipes; the resolved recipe itself is in the key",
    "eval/__init__.py": "lazy re-exports",
    "eval/errors.py": "error classes",
    "eval/tasks.py": "task-set names (in the key) and the task data fingerprint (in the key)",
    "eval/data.py": "prepares task data (its output is fingerprinted into the key)",
    "eval/bench.py": "benchmarks",
    "eval/commands.py": "qbench data prepare / qbench bench eval",
}


def areas_of_recipe(recipe: dict | None) -> list[str]:
    """The quant areas a resolved recipe (Recipe.to_dict()) runs through."""
    if recipe is None:
        return []
    names = ["quant.core"] + ([f"quant.{recipe['method']}"] if recipe.get("method") else [])
    names += [f"quant.{section}" for section in ("activation", "kv_cache", "attention") if recipe.get(section)]
    if recipe.get("transform"):
        names.append(f"quant.{recipe['transform']['type']}")
    if recipe.get("calib"):
        names.append("calibration")
    missing = [n for n in names if n not in AREAS]
    if missing:
        raise QBenchError(f"quantization step(s) {missing} have no identity area: add one to qbench/identity.py")
    return names


def cell_code_versions(recipe: dict | None) -> dict[str, str]:
    """Versions of the code areas a cell with this resolved recipe (None: full precision) runs."""
    return {name: AREAS[name].version for name in [*COMMON, *areas_of_recipe(recipe)]}


@functools.cache   # read once per process: runtime_identity asks for it for every cell
def cpu_numerics() -> str:
    """The CPU as far as it decides which kernels torch runs: torch's vector capability (AVX2,
    AVX512, ...), the vendor and model name, and a hash of the instruction-set flags
    (/proc/cpuinfo; on other systems platform.processor()). Two machines of one session's kind
    gave different GPTQ weights at the same thread count (3-bit LAMBADA perplexity 24,216 vs
    24,648 on the bundled softmax model): a CPU cell's key holds this, so a store never serves one
    machine's numbers as another's."""
    import platform

    import torch

    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            name = name.strip()
            if name in ("vendor_id", "model name", "flags") and name not in fields:
                fields[name] = value.strip()
    except OSError:
        pass
    flags = hashlib.sha256(" ".join(sorted(fields.get("flags", "").split())).encode()).hexdigest()[:12]
    return (f"{torch.backends.cpu.get_cpu_capability()}; {fields.get('vendor_id', '')} "
            f"{fields.get('model name', platform.processor())}; flags {flags}")


def runtime_identity(device: str, cpu_threads: int | None = None) -> dict:
    """Switches that change numbers without changing code: environment variables read on the
    numerical path, the float32 matmul precision and TF32 flags, deterministic-algorithms mode, on
    CUDA the softpick kernel's committed config table (qbench/attention/kernel_configs.json), and on
    CPU the torch thread count a cell computes with (`cpu_threads`, default this process's: GPTQ's
    quantized weights differ between 1 and 2 threads, the reduction order of its linear algebra)
    and the CPU (cpu_numerics). The cell sets that thread count before it computes
    (qbench/sweep/compute.py)."""
    import os

    import torch

    from .attention import triton_softpick

    ident = {
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "QBENCH_SOFTPICK_KERNEL": os.environ.get("QBENCH_SOFTPICK_KERNEL", "1"),
    }
    if device == "cuda":
        ident.update(cuda_matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
                     cudnn_tf32=torch.backends.cudnn.allow_tf32,
                     softpick_kernel_configs=triton_softpick.config_table_version())
    else:
        ident["cpu_threads"] = int(cpu_threads or torch.get_num_threads())
        ident["cpu"] = cpu_numerics()
    return ident


# ----------------------------------------------------------------------------- the lock
def code_hash(path: Path) -> str:
    """sha256 of a module's syntax tree with docstrings removed (comments never reach the tree)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()[:16]


def current_state() -> dict:
    """{area: {"version", "files": {file: code hash}}}; raises QBenchError for a missing file."""
    state = {}
    for name, area in AREAS.items():
        files = {}
        for rel in area.files:
            path = PACKAGE / rel
            if not path.is_file():
                raise QBenchError(f"qbench/identity.py: area {name!r} lists {rel}, which does not exist "
                                  f"(renamed or removed? update the area)")
            files[rel] = code_hash(path)
        state[name] = {"version": area.version, "files": files}
    return state


def unlisted_modules() -> list[str]:
    """Modules under the numerical folders that are in no area and not in NOT_NUMERICAL."""
    listed = {rel for area in AREAS.values() for rel in area.files} | set(NOT_NUMERICAL)
    found = [str(p.relative_to(PACKAGE)) for folder in NUMERICAL_FOLDERS for p in (PACKAGE / folder).rglob("*.py")]
    return sorted(rel for rel in found if rel not in listed)


def read_lock() -> dict:
    try:
        return json.loads(LOCK_FILE.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"areas": {}, "history": []}
    except json.JSONDecodeError as err:
        raise QBenchError(f"{LOCK_FILE}: not valid JSON ({err})") from None


def lock_problems() -> list[str]:
    """What the lock says is wrong with the code as it is now (empty: keys are trustworthy)."""
    lock, state = read_lock().get("areas", {}), current_state()
    problems = [f"{rel}: a module under a numerical folder that is in no identity area (add it to an area in "
                f"qbench/identity.py, or to NOT_NUMERICAL with the reason)" for rel in unlisted_modules()]
    for name, now in state.items():
        locked = lock.get(name)
        if locked is None:
            problems.append(f"area {name!r} is not in the lock: refresh it")
            continue
        changed = sorted(f for f in set(now["files"]) | set(locked["files"])
                         if now["files"].get(f) != locked["files"].get(f))
        if now["version"] != locked["version"]:
            problems.append(f"area {name!r}: version {locked['version']} -> {now['version']}: refresh the lock")
        elif changed:
            problems.append(f"area {name!r}: code of {changed} changed but its version ({now['version']}) did not: "
                            f"bump it in qbench/identity.py if numbers can change, else refresh the lock with the "
                            f"reason the change is numerically neutral")
    problems += [f"area {name!r} is in the lock but no longer defined: refresh it" for name in lock if name not in state]
    return problems


def refresh(reason: str) -> list[str]:
    """Write the lock for the code as it is, recording what changed and why; returns the changes."""
    if not reason.strip():
        raise QBenchError("refresh needs --reason: why the change is numerically neutral, or what the bump is for")
    old = read_lock()
    state = current_state()
    changes = []
    for name, now in state.items():
        was = old.get("areas", {}).get(name)
        if was != now:
            bumped = was is None or was["version"] != now["version"]
            changes.append(f"{name}: " + ("new" if was is None else
                                          (f"version {was['version']} -> {now['version']}" if bumped else
                                           "code changed, declared numerically neutral")))
    history = old.get("history", [])
    if changes:
        history.append({"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "reason": reason.strip(),
                        "changes": changes})
    LOCK_FILE.write_text(json.dumps({"areas": state, "history": history}, indent=1, sort_keys=True) + "\n")
    return changes


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m qbench.identity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="list what makes the lock disagree with the code (exit 1 if anything)")
    r = sub.add_parser("refresh", help="write the lock for the code as it is")
    r.add_argument("--reason", required=True)
    args = p.parse_args(argv)
    try:
        if args.command == "check":
            problems = lock_problems()
            print("\n".join(problems) if problems else "the identity lock matches the code")
            return 1 if problems else 0
        changes = refresh(args.reason)
        print("\n".join(changes) if changes else "nothing changed")
        return 0
    except QBenchError as err:
        print(f"qbench identity: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
