"""Task sets: names of lm-eval tasks, offline (our `qb_*` tasks built by `qbench data prepare`)
or online (lm-eval's stock tasks, which read from a dataset hub)."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import yaml as yaml_module

from .. import paths
from ..files import file_sha256
from . import data
from .errors import TaskDataError, UnknownTaskError


@dataclass(frozen=True)
class TaskInfo:
    stock: str            # the lm-eval task it reproduces (or replaces)
    label: str            # column label in the paper's tables
    metrics: tuple        # the metrics the paper reports


# offline task -> what it stands for; the paper's columns: ARC-e acc, LAMBADA acc + ppl, PIQA acc,
# SciQ acc, Wikitext word perplexity (here: held-out word perplexity)
OFFLINE_TASKS = {
    "qb_arc_easy": TaskInfo("arc_easy", "ARC-e", ("acc", "acc_norm")),
    "qb_lambada_openai": TaskInfo("lambada_openai", "LAMBADA", ("acc", "perplexity")),
    "qb_piqa": TaskInfo("piqa", "PIQA", ("acc", "acc_norm")),
    "qb_sciq": TaskInfo("sciq", "SciQ", ("acc", "acc_norm")),
    "qb_heldout_ppl": TaskInfo("wikitext", "Held-out", ("word_perplexity",)),
    # the extended set
    "qb_hellaswag": TaskInfo("hellaswag", "HellaSwag", ("acc", "acc_norm")),
    "qb_winogrande": TaskInfo("winogrande", "WinoGrande", ("acc",)),
    "qb_arc_challenge": TaskInfo("arc_challenge", "ARC-c", ("acc", "acc_norm")),
    "qb_boolq": TaskInfo("boolq", "BoolQ", ("acc",)),
    "qb_openbookqa": TaskInfo("openbookqa", "OBQA", ("acc", "acc_norm")),
}
ONLINE_TASKS = {
    "arc_easy": TaskInfo("arc_easy", "ARC-e", ("acc", "acc_norm")),
    "lambada_openai": TaskInfo("lambada_openai", "LAMBADA", ("acc", "perplexity")),
    "piqa": TaskInfo("piqa", "PIQA", ("acc", "acc_norm")),
    "sciq": TaskInfo("sciq", "SciQ", ("acc", "acc_norm")),
    "wikitext": TaskInfo("wikitext", "Wikitext", ("word_perplexity",)),
    "hellaswag": TaskInfo("hellaswag", "HellaSwag", ("acc", "acc_norm")),
    "winogrande": TaskInfo("winogrande", "WinoGrande", ("acc",)),
    "arc_challenge": TaskInfo("arc_challenge", "ARC-c", ("acc", "acc_norm")),
    "boolq": TaskInfo("boolq", "BoolQ", ("acc",)),
    "openbookqa": TaskInfo("openbookqa", "OBQA", ("acc", "acc_norm")),
}
TASK_INFO = {**OFFLINE_TASKS, **ONLINE_TASKS}

_PAPER = (["qb_arc_easy", "qb_lambada_openai", "qb_piqa", "qb_sciq", "qb_heldout_ppl"],
          ["arc_easy", "lambada_openai", "piqa", "sciq", "wikitext"])
_MORE = (["qb_hellaswag", "qb_winogrande", "qb_arc_challenge", "qb_boolq", "qb_openbookqa"],
         ["hellaswag", "winogrande", "arc_challenge", "boolq", "openbookqa"])
# set name -> (offline tasks, online tasks)
TASK_SETS = {
    "paper": _PAPER,
    # the paper's tasks and five more standard zero-shot tasks (for real pretrained models)
    "extended": (_PAPER[0] + _MORE[0], _PAPER[1] + _MORE[1]),
    # one task of each request type (multiple choice, cloze, rolling perplexity)
    "quick": (["qb_arc_easy", "qb_lambada_openai", "qb_heldout_ppl"],
              ["arc_easy", "lambada_openai", "wikitext"]),
}


def online_default() -> bool:
    """Online (stock tasks from a dataset hub) only when asked for: QBENCH_ONLINE=1."""
    return os.environ.get("QBENCH_ONLINE", "").strip().lower() in ("1", "true", "yes")


def _valid_names(online: bool) -> str:
    tasks = list(ONLINE_TASKS if online else OFFLINE_TASKS)
    extra = " (or any other lm-eval task name)" if online else ""
    return f"task sets: {', '.join(TASK_SETS)}; tasks: {', '.join(tasks)}{extra}"


def resolve_tasks(tasks="paper", online: bool | None = None, known_online: list[str] | None = None) -> list[str]:
    """A task-set name, a task name, or a list of them -> the list of lm-eval task names (in order,
    without duplicates). Raises UnknownTaskError with the valid names."""
    online = online_default() if online is None else online
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    if not isinstance(tasks, (list, tuple)) or not all(isinstance(t, str) for t in tasks):
        raise UnknownTaskError(f"expected a task-set name, a task name or a list of them, got {tasks!r}")
    if not tasks:
        raise UnknownTaskError(f"no tasks given; valid {_valid_names(online)}")
    out: list[str] = []
    for name in tasks:
        if name in TASK_SETS:
            names = TASK_SETS[name][1 if online else 0]
        elif not online and name in OFFLINE_TASKS:
            names = [name]
        elif online and (name in ONLINE_TASKS or (known_online is not None and name in known_online)
                         or name in OFFLINE_TASKS):
            names = [name]
        elif not online and name in ONLINE_TASKS:
            alt = [k for k, v in OFFLINE_TASKS.items() if v.stock == name]
            raise UnknownTaskError(
                f"{name!r} is lm-eval's stock task, which reads its data from a dataset hub; offline use "
                f"{alt[0]!r} (built by `qbench data prepare`), or evaluate online (online=True / "
                f"QBENCH_ONLINE=1). Valid {_valid_names(online)}")
        else:
            raise UnknownTaskError(f"unknown task or task set {name!r}; valid {_valid_names(online)}")
        out.extend(n for n in names if n not in out)
    return out


def yaml_dir(tasks_dir: Path | None = None) -> Path:
    return Path(tasks_dir or paths.TASKS_DIR) / "yaml"


def check_prepared(names: list[str], tasks_dir: Path | None = None) -> None:
    """Raise TaskDataError (naming the command that fixes it) unless every offline task in names
    has its data and YAML in tasks_dir."""
    tasks_dir = Path(tasks_dir or paths.TASKS_DIR).resolve()
    manifest = data.read_manifest(tasks_dir) or {}
    for name in names:
        if name not in OFFLINE_TASKS:
            continue
        cmd = "qbench data prepare"
        if name == data.HELDOUT_TASK:
            cmd += f" --heldout PATH` (the default file {data.DEFAULT_HELDOUT} is used when it exists)"
        else:
            cmd += "`"
        where = f" (QBENCH_DATA={paths.DATA_DIR})" if os.environ.get("QBENCH_DATA") else ""
        info = manifest.get("tasks", {}).get(name)
        if manifest.get("format_version") not in (None, data.FORMAT_VERSION):
            raise TaskDataError(f"task data in {tasks_dir} was prepared by another qbench version: "
                                f"run `qbench data prepare --force`")
        if info is None or not (tasks_dir / info["file"]).exists():
            raise TaskDataError(f"task {name!r} is not prepared in {tasks_dir}{where}: run `{cmd}")
        refresh_yaml(name, tasks_dir, manifest)
        if name in data.EXPECTED and info.get("count") != data.EXPECTED[name][1]:
            raise TaskDataError(f"task {name!r} has {info.get('count')} records, expected "
                                f"{data.EXPECTED[name][1]}: run `qbench data prepare --force`")


def refresh_yaml(name: str, tasks_dir: Path, manifest: dict) -> Path:
    """The YAML of a prepared offline task, rewritten first when it is missing or points at another
    folder (the data folder moved, e.g. carried to another machine): the file evaluation reads."""
    yml = yaml_dir(tasks_dir) / f"{name}.yaml"
    info = manifest["tasks"][name]
    if not yml.exists() or str(Path(tasks_dir) / info["file"]) not in yml.read_text():
        data.write_yamls(tasks_dir, manifest)
    return yml


class _FunctionTagLoader(getattr(yaml_module, "CSafeLoader", yaml_module.SafeLoader)):
    """Reads lm-eval task YAMLs as data: a `!function name` tag stays the string "name"."""


_FunctionTagLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def yaml_data_files(yml_text: str) -> list[Path]:
    """The data files a task YAML points lm-eval at (dataset_kwargs.data_files), in order."""
    cfg = yaml_module.load(yml_text, Loader=_FunctionTagLoader) or {}
    files = (cfg.get("dataset_kwargs") or {}).get("data_files") or []
    if isinstance(files, dict):
        files = list(files.values())
    out = []
    for f in files if isinstance(files, list) else [files]:
        out.extend(Path(x) for x in (f if isinstance(f, list) else [f]))
    return out


_DIGESTS: dict[tuple, str] = {}   # (path, size, mtime_ns) -> sha256 of the bytes, per process


def _digest(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_sha256(path)
    return _DIGESTS[key]


def task_fingerprint(names: list[str], tasks_dir: Path | None = None) -> dict[str, str]:
    """Content hashes of what defines each task's numbers, for cell keys: for an offline task the
    bytes of the data files its YAML points at and the YAML text (the tasks folder replaced by a
    placeholder), read when called (so data edited after `qbench data prepare` gives a new
    fingerprint); for a stock task the lm-eval version. For unchanged prepared data the value is
    the one earlier versions computed from the manifest (the same digest of the same bytes)."""
    import lm_eval

    tasks_dir = Path(tasks_dir or paths.TASKS_DIR).resolve()
    manifest = data.read_manifest(tasks_dir) or {}
    out = {}
    for name in names:
        info = manifest.get("tasks", {}).get(name)
        if name not in OFFLINE_TASKS:
            out[name] = f"lm-eval {getattr(lm_eval, '__version__', '?')} stock task"
        elif info is None or not (tasks_dir / info["file"]).is_file():
            out[name] = "not prepared"
        else:
            text = refresh_yaml(name, tasks_dir, manifest).read_text()
            files = yaml_data_files(text)
            missing = [str(f) for f in files if not f.is_file()]
            if missing or not files:
                raise TaskDataError(f"task {name!r}: its YAML {yaml_dir(tasks_dir) / (name + '.yaml')} points at "
                                    f"{', '.join(missing) or 'no data file'}: run `qbench data prepare --force`")
            digests = "".join(_digest(f) for f in files)
            out[name] = hashlib.sha256((digests + text.replace(str(tasks_dir), "<TASKS_DIR>")).encode()).hexdigest()[:16]
    return out
