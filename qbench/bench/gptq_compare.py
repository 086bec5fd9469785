"""GPTQ of two qbench trees on the same model and calibration batch: are the quantized weights
equal, and how long did each take (CPU or GPU)?

    git archive <old commit> | tar -x -C /tmp/old
    python -m qbench.bench.gptq_compare --old /tmp/old [--new .] [--attention softpick]
        [--hidden 256 --layers 4 --heads 4] [--samples 32 --seq-len 128] [--threads 1] [--repeats 2]

Each tree runs in its own process (only APIs both have: qbench.model.new_model, qbench.quant's
load_recipe / quantize), on a random model built with the same seed, recipes/gptq.yaml at 4 bits
with the calibration batch resized; the processes alternate `--repeats` times and the median
time of each tree is reported (CPU seconds and wall seconds of quantize() alone). Prints, per
layer, whether the weights are bit-identical, and the largest difference relative to the layer's
largest weight.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = r"""
import json, sys, time, torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
from qbench.model import new_model
from qbench.quant import load_recipe, quantize
device = args["device"]
model = new_model(args["attention"], seed=0, hidden_size=args["hidden"], num_hidden_layers=args["layers"],
                  num_heads=args["heads"], vocab_size=8192, max_position_embeddings=max(512, args["seq_len"]))
model = model.to(device)
recipe = load_recipe("gptq").replace(calib={"samples": args["samples"], "seq_len": args["seq_len"], "seed": 0})
calib = torch.randint(0, 8192, (args["samples"], args["seq_len"]), generator=torch.Generator().manual_seed(1))
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
sync()
cpu0, wall0 = time.process_time(), time.perf_counter()
quantize(model, recipe, args["bits"], calib=calib)
sync()
cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
torch.save({n: p.detach().cpu() for n, p in model.named_parameters() if n.endswith("_proj.weight")}, args["out"])
print("TIMES " + json.dumps({"cpu": cpu, "wall": wall}))
"""


def run_tree(tree: Path, params: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(params)], env=env, capture_output=True,
                          text=True, cwd=tree)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("TIMES ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{tree}: the GPTQ run failed\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("TIMES "):])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qbench.bench.gptq_compare", description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="the other qbench tree (e.g. a git archive)")
    ap.add_argument("--new", type=Path, default=Path(__file__).resolve().parents[2],
                    help="this qbench tree (default: the one holding this module)")
    ap.add_argument("--attention", default="softmax", choices=["softmax", "softpick"])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    times = {"old": [], "new": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for which, tree in (("old", args.old), ("new", args.new)):
                params = {k: v for k, v in vars(args).items() if k not in ("old", "new", "repeats")}
                params["out"] = str(Path(tmp) / f"{which}.pt")
                times[which].append(run_tree(tree.resolve(), params))
        import torch

        old, new = torch.load(Path(tmp) / "old.pt"), torch.load(Path(tmp) / "new.pt")
    identical = 0
    worst = 0.0
    for name in sorted(old):
        a, b = old[name].float(), new[name].float()
        same = torch.equal(a, b)
        identical += same
        diff = float((a - b).abs().max() / a.abs().max())
        worst = max(worst, diff)
        if not same:
            print(f"  {name}: differs, max |old - new| / max |old| = {diff:.2e}")
    med = {k: {m: sorted(t[m] for t in v)[len(v) // 2] for m in ("cpu", "wall")} for k, v in times.items()}
    print(f"layers bit-identical: {identical} of {len(old)}; largest relative difference {worst:.2e}")
    print(f"model hidden {args.hidden}, {args.layers} blocks, {args.attention}; calibration {args.samples} x "
          f"{args.seq_len}; {args.bits}-bit; {args.threads} thread(s) on {args.device}; median of {args.repeats}")
    for k in ("old", "new"):
        runs = ", ".join(f"{t['cpu']:.2f}" for t in times[k])
        print(f"  {k}: quantize {med[k]['cpu']:.2f} s CPU, {med[k]['wall']:.2f} s wall   (all runs, CPU s: {runs})")
    print(f"  speed-up (CPU time): {med['old']['cpu'] / med['new']['cpu']:.2f}x")
    return 0 if identical == len(old) else 1


if __name__ == "__main__":
    sys.exit(main())
