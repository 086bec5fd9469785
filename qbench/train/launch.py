"""Processes of a run: a pair's two arms (one after the other, or at once in two processes), and
data-parallel runs under torchrun (`--processes N`: N processes per arm; on CUDA one GPU each, the
two arms of a pair on disjoint GPU sets when 2 x N GPUs are visible, e.g. 4 + 4 on eight).

Each child is `python -m qbench.train.train ...` (wrapped in `python -m torch.distributed.run
--standalone --nproc-per-node N` for N > 1) with every input given explicitly (token file,
tokenizer, held-out text: resolved and encoded once, here), so both arms read the same files.
Children write OUT/<arm>.log; a failed child stops the others.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from ..paths import SOURCE_ROOT
from . import ddp
from .data import TrainError
from .train import (KINDS, LOG_FILE, PAIR_SUMMARY_FILE, SUMMARY_FILE, Inputs, RunSpec, check_out_dir, check_spec,
                    prepare_out_dir, resolve_inputs, train_one)


def resolve_for(spec: RunSpec) -> Inputs:
    """The run's inputs, encoding the corpus with the --from checkpoint's own tokenizer when no
    --tokenizer is given (loaded here once, not in every child)."""
    model_tokenizer = None
    if spec.start and not spec.tokenizer:
        from .start import checkpoint_tokenizer

        model_tokenizer = checkpoint_tokenizer(spec.start)
    return resolve_inputs(spec, model_tokenizer=model_tokenizer)


def _with(spec: RunSpec, **changes) -> RunSpec:
    return RunSpec(**{**asdict(spec), **changes})


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def train_pair(spec: RunSpec, concurrent: bool | None = None) -> dict:
    """Train spec.out/softmax and spec.out/softpick with one seed, one data order, one recipe
    (one start checkpoint with --from). On CUDA the two run as two concurrent processes (or
    process groups, --nproc) by default, each on GPUs of its own when enough are visible; on the
    CPU one after the other. Writes spec.out/pair_summary.json. With --measure-steps: each arm's
    measurement, one after the other."""
    check_spec(spec)
    if spec.measure_steps is not None:
        return {"measurements": {kind: measure_one(_with(spec, kind=kind)) for kind in KINDS}}
    for out, overwrite in ((Path(spec.out), True), *((Path(spec.out) / kind, spec.overwrite) for kind in KINDS)):
        check_out_dir(out, overwrite)
    inputs = resolve_for(spec)   # before any folder is made
    root = prepare_out_dir(Path(spec.out), overwrite=True)
    for kind in KINDS:
        prepare_out_dir(root / kind, spec.overwrite)
    if concurrent is None:
        concurrent = spec.device != "cpu" and _cuda_available()
    started = time.time()
    if concurrent or spec.nproc > 1:
        summaries = run_arms(spec, inputs, root, {kind: root / kind for kind in KINDS}, concurrent)
    else:
        summaries = {kind: train_one(_with(spec, kind=kind, out=str(root / kind)), inputs) for kind in KINDS}
    first, second = (summaries[kind] for kind in KINDS)
    pair = {
        "command": spec.command,
        "preset": spec.preset,
        "seed": spec.seed,
        "start": first.get("start"),
        "concurrent_processes": concurrent,
        "processes_per_arm": spec.nproc,
        "device": first.get("device"),
        "gpus": {kind: s.get("cuda_visible_devices") for kind, s in summaries.items()},
        "wall_seconds": round(time.time() - started, 2),
        "same_init": first["init_hash"] == second["init_hash"],
        "same_data_order": first["data_order_hash"] == second["data_order_hash"],
        "same_recipe": first["recipe_hash"] == second["recipe_hash"],
        "models": {kind: {key: s.get(key) for key in ("attention_backend", "steps", "tokens_seen", "parameters",
                                                       "final_train_loss_mean_last_50", "train_seconds",
                                                       "tokens_per_second", "init_hash", "data_order_hash",
                                                       "recipe_hash", "heldout")}
                   for kind, s in summaries.items()},
    }
    from .data import write_json

    write_json(root / PAIR_SUMMARY_FILE, pair)
    if not (pair["same_init"] and pair["same_data_order"] and pair["same_recipe"]):
        raise TrainError(f"the two runs did not share init, data order and recipe: see {root / PAIR_SUMMARY_FILE}")
    return pair


def train_distributed(spec: RunSpec) -> dict:
    """One model trained by spec.nproc torchrun processes; returns rank 0's summary (or
    measurement)."""
    check_spec(spec)
    if spec.measure_steps is not None:
        return measure_one(spec)
    check_out_dir(Path(spec.out), spec.overwrite)
    inputs = resolve_for(spec)   # before the folder is made
    out = prepare_out_dir(Path(spec.out), spec.overwrite)
    return run_arms(spec, inputs, out, {spec.kind: out}, concurrent=False)[spec.kind]


def measure_one(spec: RunSpec) -> dict:
    """The --measure-steps result of one arm (in this process, or under torchrun for --processes > 1)."""
    if spec.nproc == 1:
        return train_one(spec)
    with tempfile.TemporaryDirectory(prefix="qbench-measure-") as tmp:
        out = Path(spec.out) if spec.out else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        inputs = resolve_for(spec)
        return run_arms(spec, inputs, out, {spec.kind: out}, concurrent=False)[spec.kind]


def _child_argv(spec: RunSpec, inputs: Inputs, kind: str, out: Path) -> list[str]:
    # absolute paths: the children run in the repository root, wherever the parent was started
    argv = [sys.executable, "-m", "qbench.train.train", "--preset", spec.preset, "--attention", kind,
            "--out", str(Path(out).resolve()), "--seed", str(spec.seed), "--tokens", str(Path(inputs.tokens).resolve()),
            "--device", spec.device, "--log-every", str(spec.log_every), "--no-progress",
            "--precision", spec.precision, "--optimizer-impl", spec.optimizer_impl,
            "--recorded-command", spec.command]
    for flag, value in (("--steps", spec.steps), ("--batch-size", spec.batch_size), ("--micro-batch", spec.micro_batch),
                        ("--lr", spec.lr), ("--measure-steps", spec.measure_steps)):
        if value is not None:
            argv += [flag, str(value)]
    argv += ["--tokenizer", str(Path(inputs.tokenizer).resolve())] if inputs.tokenizer else []
    argv += ["--from", str(Path(spec.start).resolve())] if spec.start else []
    argv += ["--heldout", str(Path(inputs.heldout).resolve())] if inputs.heldout else ["--no-eval"]
    argv += ["--processes", str(spec.nproc)] if spec.nproc > 1 else []
    argv += ["--compile"] if spec.compile else []
    argv += [] if spec.deterministic else ["--no-deterministic"]
    argv += ["--overwrite"] if spec.overwrite or spec.measure_steps is not None else []
    return ddp.torchrun_argv(spec.nproc, argv) if spec.nproc > 1 else argv


def arm_envs(n_arms: int, nproc: int, device: str, concurrent: bool) -> list[dict]:
    """Environment overrides of each arm's child: on the CPU a share of the cores per process;
    on CUDA the arm's GPUs (nproc each, disjoint when the arms run at once and enough GPUs are
    visible; with one GPU per arm and too few GPUs, the arms share)."""
    from ..sweep.run import worker_devices

    running = n_arms if concurrent else 1
    if device == "cpu" or not _cuda_available():
        return [worker_devices(running * nproc, "cpu")[0] for _ in range(n_arms)]
    if device not in ("auto", "cuda"):    # pinned to one device (cuda:N): nothing to spread
        if nproc > 1:
            raise TrainError(f"--device {device} with --processes {nproc}: use --device cuda (one GPU per process)")
        return [{} for _ in range(n_arms)]
    visible = _visible_gpus()
    need = running * nproc
    if len(visible) < nproc:
        raise TrainError(f"--processes {nproc}: only {len(visible)} GPU(s) visible ({', '.join(visible) or 'none'})")
    if len(visible) < need:
        if nproc > 1:
            raise TrainError(f"--pair --processes {nproc} at once needs {need} GPUs, {len(visible)} visible; "
                             f"pass --sequential (each arm on {nproc} GPUs, one after the other)")
        return [{} for _ in range(n_arms)]     # one GPU: the arms share it
    envs = worker_devices(need, "cuda")
    groups = [envs[i * nproc:(i + 1) * nproc] for i in range(running)]
    return [{**ddp.NVLINK_MULTICAST_OFF, **groups[i % running][0],
             "CUDA_VISIBLE_DEVICES": ",".join(e["CUDA_VISIBLE_DEVICES"] for e in groups[i % running])}
            for i in range(n_arms)]


def _visible_gpus() -> list[str]:
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [d.strip() for d in visible.split(",") if d.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def run_arms(spec: RunSpec, inputs: Inputs, root: Path, outs: dict[str, Path], concurrent: bool) -> dict:
    """Run each arm (name -> output folder) as a child process (group), all at once or one after
    the other; returns each arm's summary (its measurement with --measure-steps)."""
    envs = arm_envs(len(outs), spec.nproc, spec.device, concurrent)
    results = {}
    arms = list(outs.items())
    batches = [arms] if concurrent else [[arm] for arm in arms]
    for batch in batches:
        _run_children(spec, inputs, root, {name: (out, envs[arms.index((name, out))]) for name, out in batch})
        for name, out in batch:
            file = out / (f"measure_{name}.json" if spec.measure_steps is not None else SUMMARY_FILE)
            results[name] = json.loads(file.read_text())
    return results


def _run_children(spec: RunSpec, inputs: Inputs, root: Path, arms: dict[str, tuple[Path, dict]]) -> None:
    from tqdm.auto import tqdm

    steps = spec.preset_values()["steps"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SOURCE_ROOT), os.environ.get("PYTHONPATH")]))}
    for key, value in ddp.NVLINK_MULTICAST_OFF.items():
        env.setdefault(key, value)
    procs, logs, bars = {}, {}, {}
    for i, (name, (out, child_env)) in enumerate(arms.items()):
        (out / LOG_FILE).unlink(missing_ok=True)
        logs[name] = open(root / f"{name}.log", "w")
        procs[name] = subprocess.Popen(_child_argv(spec, inputs, name, out), stdout=logs[name],
                                       stderr=subprocess.STDOUT, env={**env, **child_env})
        bars[name] = tqdm(total=steps, desc=f"{spec.preset} {name}", unit="step", position=i,
                          disable=not spec.progress or spec.measure_steps is not None,
                          mininterval=1.0 if sys.stderr.isatty() else 30.0)
    try:
        while any([p.poll() is None for p in procs.values()]):  # a list: poll every process
            time.sleep(2.0)
            for name, (out, _) in arms.items():
                _update_bar(bars[name], out / LOG_FILE)
            if any(p.returncode for p in procs.values()):  # one failed: the pair is lost, stop the other
                for p in procs.values():
                    if p.poll() is None:
                        p.terminate()
                for p in procs.values():
                    p.wait()
    except KeyboardInterrupt:
        for p in procs.values():
            p.terminate()
        raise
    finally:
        for name, (out, _) in arms.items():
            _update_bar(bars[name], out / LOG_FILE)
            bars[name].close()
            logs[name].close()
    failed = {name: p.returncode for name, p in procs.items() if p.returncode}
    if failed:
        failed = {name: rc for name, rc in failed.items() if rc != -15} or failed  # not the one we stopped
        tails = "\n".join(f"--- {name} (exit {rc}), end of {root / f'{name}.log'}:\n"
                          + "\n".join((root / f"{name}.log").read_text().splitlines()[-15:])
                          for name, rc in failed.items())
        raise TrainError(f"training failed for {', '.join(failed)}\n{tails}")


def _update_bar(bar, log_path: Path) -> None:
    from .loop import LOG_COLUMNS

    try:
        lines = log_path.read_text().splitlines()
    except OSError:
        return
    if len(lines) < 2:
        return
    last = lines[-1].split(",")
    if len(last) != len(LOG_COLUMNS):
        return
    bar.set_postfix(loss=last[2], refresh=False)
    bar.update(int(last[0]) - bar.n)
