"""Task sets: names of lm-eval tasks, offline (our `qb_*` tasks built by `qbench data prepare`)
or online (lm-eval's stock tasks, which read from a dataset hub)."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .. import paths
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
}
ONLINE_TASKS = {
    "arc_easy": TaskInfo("arc_easy", "ARC-e", ("acc", "acc_norm")),
    "lambada_openai": TaskInfo("lambada_openai", "LAMBADA", ("acc", "perplexity")),
    "piqa": TaskInfo("piqa", "PIQA", ("acc", "acc_norm")),
    "sciq": TaskInfo("sciq", "SciQ", ("acc", "acc_norm")),
    "wikitext": TaskInfo("wikitext", "Wikitext", ("word_perplexity",)),
}
TASK_INFO = {**OFFLINE_TASKS, **ONLINE_TASKS}

# set name -> (offline tasks, online tasks)
TASK_SETS = {
    "paper": (["qb_arc_easy", "qb_lambada_openai", "qb_piqa", "qb_sciq", "qb_heldout_ppl"],
              ["arc_easy", "lambada_openai", "piqa", "sciq", "wikitext"]),
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
        yml = yaml_dir(tasks_dir) / f"{name}.yaml"
        if not yml.exists() or str(tasks_dir / info["file"]) not in yml.read_text():
            data.write_yamls(tasks_dir, manifest)   # the data folder moved (or YAMLs deleted): rewrite them
        if name in data.EXPECTED and info.get("count") != data.EXPECTED[name][1]:
            raise TaskDataError(f"task {name!r} has {info.get('count')} records, expected "
                                f"{data.EXPECTED[name][1]}: run `qbench data prepare --force`")


def task_fingerprint(names: list[str], tasks_dir: Path | None = None) -> dict[str, str]:
    """Content hashes of what defines each task's numbers (data file + YAML for offline tasks;
    the lm-eval version for stock ones): for cell keys."""
    import lm_eval

    tasks_dir = Path(tasks_dir or paths.TASKS_DIR).resolve()
    manifest = data.read_manifest(tasks_dir) or {}
    yamls = data.task_yamls(tasks_dir)
    out = {}
    for name in names:
        if name in OFFLINE_TASKS and name in manifest.get("tasks", {}):
            yml = yamls[name].replace(str(tasks_dir), "<TASKS_DIR>")
            out[name] = hashlib.sha256((manifest["tasks"][name]["sha256"] + yml).encode()).hexdigest()[:16]
        elif name in OFFLINE_TASKS:
            out[name] = "not prepared"
        else:
            out[name] = f"lm-eval {getattr(lm_eval, '__version__', '?')} stock task"
    return out
