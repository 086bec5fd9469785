"""Bad user input to the `qbench` command: every case is refused before any work starts, with exit
status 2, one error line on stderr (`qbench COMMAND: error: ...`; argparse's own errors: its usage
lines, then that line) naming the offending file and field or argument, no traceback, nothing on
stdout and nothing written (results, cells, output folders).

Sweep files, recipe files (through a sweep's grid), checkpoints (through `qbench info` and a sweep's
arms) and the arguments of every command. The CLI runs in this process (capsys); a few cases run
`python -m qbench.cli` to show the same end to end."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qbench import paths
from qbench.cli import main

from conftest import gptq32, write_recipe, write_sweep

pytestmark = pytest.mark.usefixtures("use_data_dir")

DROP = object()            # a field to leave out of a file
GRID = [{"recipe": "rtn", "bits": [4]}]
CASES: dict = {}           # id -> (build(ctx) -> (argv, needles), argparse error?)


def case(name, argparse=False):
    def register(build):
        assert name not in CASES, name
        CASES[name] = (build, argparse)
        return build
    return register


class Ctx:
    """Builds the bad inputs of one case under tmp (the current folder while the case runs)."""

    def __init__(self, tmp: Path, pair, request):
        self.tmp, self.pair, self.request = tmp, pair, request
        self.results = tmp / "results"

    @property
    def llama(self) -> Path:
        """A tiny transformers (Llama) checkpoint."""
        return self.request.getfixturevalue("llama_dir")

    # ---- sweep files
    def sweep(self, grid=GRID, **fields) -> Path:
        """A sweep file of the tiny pair (conftest.write_sweep) with `fields` replaced; DROP leaves a
        field out (`arms` replaces the pair)."""
        path = write_sweep(self.tmp / "sweeps", self.pair, [] if grid is DROP else grid)
        doc = {**json.loads(path.read_text()), "grid": grid, **fields}
        if "arms" in fields and "pair" not in fields:
            doc.pop("pair")
        path.write_text(json.dumps({k: v for k, v in doc.items() if v is not DROP}))
        return path

    def file(self, name, content) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
        return path

    def run_sweep(self, path, *extra) -> list:
        return ["sweep", str(path), "--results", str(self.results), "--no-progress", *extra]

    # ---- recipes
    def recipe(self, name="bad", **fields) -> str:
        """A recipe file (conftest.write_recipe: rtn, bits [4, 8], groups of 32); DROP leaves a field out."""
        path = write_recipe(self.tmp / "rec", name, **{k: v for k, v in fields.items() if v is not DROP})
        doc = json.loads(path.read_text())
        for k, v in fields.items():
            if v is DROP:
                doc.pop(k, None)
        path.write_text(json.dumps(doc))
        return str(path)

    def with_recipe(self, recipe: str, **entry) -> tuple[list, str]:
        """`qbench sweep` of a sweep whose grid holds `recipe`, and the sweep file's field naming it."""
        return self.run_sweep(self.sweep([{"recipe": recipe, **entry}])), "field 'grid[0].recipe'"

    # ---- checkpoints
    def ckpt(self, name="ck", config=None, drop=(), write=None, source=None) -> Path:
        """A copy of the tiny softmax checkpoint with config.json fields changed (DROP: removed),
        files removed and files written."""
        folder = self.tmp / name
        shutil.copytree(source or self.pair[0], folder)
        if config:
            raw = json.loads((folder / "config.json").read_text())
            for k, v in config.items():
                if v is DROP:
                    raw.pop(k, None)
                else:
                    raw[k] = v
            (folder / "config.json").write_text(json.dumps(raw))
        for f in drop:
            (folder / f).unlink()
        for f, content in (write or {}).items():
            self.file(f"{name}/{f}", content)
        return folder


def files_under(root: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def run_cli(argv, capsys):
    capsys.readouterr()              # what building the case printed (progress bars)
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exit_:      # argparse
        rc = exit_.code
    out, err = capsys.readouterr()
    return rc, out, err


def command_of(argv) -> str:
    """The command as the CLI's error line names it: `sweep`, `data prepare`, `bench eval`, ..."""
    argv = [str(a) for a in argv]
    while argv and argv[0] == "--recipes":
        argv = argv[2:]
    return " ".join(argv[:2] if argv[0] in ("data", "bench") else argv[:1])


@pytest.fixture
def ctx(tmp_path, tiny_pair, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")        # never the network
    monkeypatch.setenv("QBENCH_RECIPES", "")          # `--recipes` writes it; restored after each case
    monkeypatch.setattr(paths, "MODELS_DIR", tmp_path / "models")
    return Ctx(tmp_path, tiny_pair, request)


# ============================================================================ sweep files
@case("sweep: missing file")
def _(c):
    return ["sweep", c.tmp / "none.yaml"], "no such sweep file", "none.yaml"


@case("sweep: not YAML")
def _(c):
    path = c.file("bad.yaml", "name: [unclosed\ngrid: {")
    return c.run_sweep(path), path, "not valid YAML"


@case("sweep: not text")
def _(c):
    path = c.file("bin.yaml", b"\xff\xfe\x00\x81binary")
    return c.run_sweep(path), path, "not UTF-8 text"


@case("sweep: not a mapping")
def _(c):
    path = c.file("list.yaml", "- rtn\n- hqq\n")
    return c.run_sweep(path), path, "a sweep file is a mapping of fields, got list"


@case("sweep: unknown top-level field")
def _(c):
    path = c.sweep(oops=1)
    return c.run_sweep(path), path, "field 'oops': unknown field"


@case("sweep: no grid")
def _(c):
    path = c.sweep(grid=DROP)
    return c.run_sweep(path), path, "field 'grid': missing"


@case("sweep: no arms and no pair")
def _(c):
    path = c.sweep(pair=DROP)
    return c.run_sweep(path), path, "field 'arms': missing"


@case("sweep: arms and pair")
def _(c):
    path = c.sweep(arms=[{"path": str(c.pair[0])}], pair={"softmax": str(c.pair[0]), "softpick": str(c.pair[1])})
    return c.run_sweep(path), path, "field 'pair': give either"


@case("sweep: arm without path")
def _(c):
    path = c.sweep(arms=[{"name": "a"}])
    return c.run_sweep(path), path, "field 'arms[0]'"


@case("sweep: arm checkpoint missing")
def _(c):
    path = c.sweep(arms=[{"name": "a", "path": str(c.tmp / "nothere")}])
    return c.run_sweep(path), path, "field 'arms[0]'", "checkpoint not found", "nothere"


@case("sweep: duplicate arm names")
def _(c):
    path = c.sweep(arms=[{"name": "a", "path": str(c.pair[0])}, {"name": "a", "path": str(c.pair[1])}])
    return c.run_sweep(path), path, "field 'arms[1].name'", "used twice"


@case("sweep: one checkpoint twice")
def _(c):
    path = c.sweep(arms=[{"name": "a", "path": str(c.pair[0])}, {"name": "b", "path": str(c.pair[0])}])
    return c.run_sweep(path), path, "field 'arms'", "same checkpoint"


@case("sweep: baseline not an arm")
def _(c):
    path = c.sweep(baseline="nope")
    return c.run_sweep(path), path, "field 'baseline'", "'nope' is not an arm"


@case("sweep: arm attention unknown")
def _(c):
    path = c.sweep(arms=[{"path": str(c.pair[0]), "attention": "sparsemax"}])
    return c.run_sweep(path), path, "field 'arms[0].attention'", "sparsemax"


@case("sweep: pair swapped")
def _(c):
    path = c.sweep(pair={"softmax": str(c.pair[1]), "softpick": str(c.pair[0])})
    return c.run_sweep(path), path, "field 'pair.softmax'", "given as the softmax model"


@case("sweep: unknown task")
def _(c):
    path = c.sweep(tasks=["qb_arc_easy", "nope"])
    return c.run_sweep(path), path, "field 'tasks'", "unknown task or task set 'nope'"


@case("sweep: tasks empty")
def _(c):
    path = c.sweep(tasks=[])
    return c.run_sweep(path), path, "field 'tasks'", "no tasks given"


@case("sweep: tasks a number")
def _(c):
    path = c.sweep(tasks=5)
    return c.run_sweep(path), path, "field 'tasks'"


for _field, _value in (("limit", -1), ("limit", "10"), ("limit", True), ("cpu_limit", 0), ("calib_seeds", 0)):
    @case(f"sweep: {_field} {_value!r}")
    def _(c, field=_field, value=_value):
        path = c.sweep(**{field: value})
        return c.run_sweep(path), path, f"field '{field}'", repr(value)


@case("sweep: cpu_calib unknown field")
def _(c):
    path = c.sweep(cpu_calib={"batches": 4})
    return c.run_sweep(path), path, "field 'cpu_calib.batches'"


@case("sweep: calibration text missing")
def _(c):
    path = c.sweep([{"recipe": gptq32(c.tmp / "rec"), "bits": [4]}], calibration_text=str(c.tmp / "missing.txt"))
    return c.run_sweep(path), path, "field 'calibration_text'", "missing.txt"


@case("sweep: eval unknown field")
def _(c):
    path = c.sweep(eval={"batch": 4})
    return c.run_sweep(path), path, "field 'eval.batch'"


@case("sweep: device unknown")
def _(c):
    path = c.sweep(device="tpu")
    return c.run_sweep(path), path, "field 'device'", "'tpu'"


@case("sweep: dtype unknown")
def _(c):
    path = c.sweep(dtype="int8")
    return c.run_sweep(path), path, "field 'dtype'", "'int8'"


@case("sweep: --results is a file")
def _(c):
    c.file("results", "not a folder")
    return c.run_sweep(c.sweep()), "command line: field 'results'", "is a file"


@case("sweep: default results folder is a file")
def _(c):
    path = c.sweep(name="rs")
    c.file("results/rs", "")
    return ["sweep", path], path, "field 'results'", "is a file"


@case("sweep: extends a missing file")
def _(c):
    path = c.file("child.yaml", "extends: base.yaml\nlimit: 2\n")
    return c.run_sweep(path), path, "field 'extends'", "no such sweep file: "


@case("sweep: extends a cycle")
def _(c):
    c.file("b.yaml", "extends: a.yaml\n")
    path = c.file("a.yaml", "extends: b.yaml\n")
    return c.run_sweep(path), "field 'extends'", "a cycle"


@case("sweep: arm a hub id without hf:")
def _(c):
    path = c.sweep(arms=[{"path": "someorg/some-model"}])
    return c.run_sweep(path), path, "field 'arms[0]'", "needs the prefix hf:"


@case("sweep: arm hf: offline")
def _(c):
    path = c.sweep(arms=[{"path": "hf:someorg/some-model"}])
    return c.run_sweep(path), path, "field 'arms[0]'", "HF_HUB_OFFLINE=1"


@case("sweep: arm real: unknown model")
def _(c):
    path = c.sweep(arms=[{"path": "real:no-such-model"}])
    return c.run_sweep(path), path, "field 'arms[0]'", "unknown real model 'no-such-model'"


@case("sweep: arm real: not fetched")
def _(c):
    path = c.sweep(arms=[{"path": "real:smollm2-135m"}])
    return c.run_sweep(path), path, "field 'arms[0]'", "qbench data models smollm2-135m"


@case("sweep: arm config mismatching its weights")
def _(c):
    ck = c.ckpt(config={"num_hidden_layers": 1})
    path = c.sweep(arms=[{"path": str(ck)}])
    return c.run_sweep(path), path, "field 'arms[0]'", "num_hidden_layers=1 but the weights have 2 layers"


# ---- grid entries
@case("grid: not a list")
def _(c):
    path = c.sweep({"recipe": "rtn"})
    return c.run_sweep(path), path, "field 'grid'"


@case("grid: entry unknown field")
def _(c):
    path = c.sweep([{"recipe": "rtn", "bitz": [4]}])
    return c.run_sweep(path), path, "field 'grid[0].bitz'"


@case("grid: unknown recipe")
def _(c):
    path = c.sweep([{"recipe": "rtn", "bits": [4]}, {"recipe": "nope"}])
    return c.run_sweep(path), path, "field 'grid[1].recipe'", "no recipe named 'nope'"


@case("grid: recipe file missing")
def _(c):
    path = c.sweep([{"recipe": str(c.tmp / "gone.yaml")}])
    return c.run_sweep(path), path, "field 'grid[0].recipe'", "gone.yaml", "no such recipe file"


@case("grid: same recipe twice")
def _(c):
    path = c.sweep([{"recipe": "rtn", "bits": [4]}, {"recipe": "rtn", "bits": [8]}])
    return c.run_sweep(path), path, "field 'grid[1].recipe'", "already in grid[0]"


for _bits, _why in (("4", "expected a non-empty list"), ([True], "expected integers"), ([5], "does not support 5-bit"),
                    ([4, 4], "listed twice")):
    @case(f"grid: bits {_bits!r}")
    def _(c, bits=_bits, why=_why):
        path = c.sweep([{"recipe": "rtn", "bits": bits}])
        return c.run_sweep(path), path, "field 'grid[0].bits'", why


for _axis, _values in (("act_bits", ["eight"]), ("act_bits", [4.5]), ("act_bits", [8, 8]), ("act_bits", [1]),
                       ("kv_bits", ["mxfp4"]), ("kv_bits", [9])):
    @case(f"grid: {_axis} {_values!r}")
    def _(c, axis=_axis, values=_values):
        path = c.sweep([{"recipe": "rtn", "bits": [4], axis: values}])
        return c.run_sweep(path), path, f"field 'grid[0].{axis}'"


# ============================================================================ recipe files (through a grid)
def _recipe_case(name, needle, **fields):
    @case(f"recipe: {name}")
    def _(c):
        recipe = c.recipe(**fields)
        argv, where = c.with_recipe(recipe)
        return argv, where, recipe, needle


_recipe_case("unknown method", "field 'method': unknown method 'awq2'", method="awq2")
_recipe_case("quantizes nothing", "quantizes nothing", method=DROP, bits=DROP, weight=DROP)
_recipe_case("unknown top-level field", "field 'group_size': unknown field", group_size=32)
_recipe_case("bits missing", "field 'bits': missing", bits=DROP)
_recipe_case("bits not integers", "field 'bits[0]'", bits=[4.5])
_recipe_case("bits unsupported", "16-bit is not supported", bits=[16])
_recipe_case("weight unknown field", "field 'weight.groups'", weight={"groups": 32})
_recipe_case("weight group size 0", "field 'weight.group_size'", weight={"group_size": 0, "symmetric": False})
_recipe_case("weight symmetric text", "field 'weight.symmetric'", weight={"group_size": 32, "symmetric": "yes"})
_recipe_case("activation unknown field", "field 'activation.width'", activation={"width": 8})
_recipe_case("activation bits 1", "field 'activation.bits'", activation={"bits": 1})
_recipe_case("activation format unknown", "field 'activation.format'", activation={"format": "fp4"})
_recipe_case("activation granularity of another format", "field 'activation.granularity'",
             activation={"format": "mxfp4", "granularity": "per_token"})
_recipe_case("kv_cache unknown field", "field 'kv_cache.width'", kv_cache={"bits": 4, "width": 4})
_recipe_case("kv_cache bits 16", "field 'kv_cache.bits'", kv_cache={"bits": 16})
_recipe_case("kv_cache per_group without group_size", "field 'kv_cache.group_size'",
             kv_cache={"bits": 4, "v_granularity": "per_group"})
_recipe_case("attention unknown field", "field 'attention.probs'", attention={"probs": 8})
_recipe_case("attention no widths", "field 'attention.probs_bits'", attention={})
_recipe_case("transform type unknown", "field 'transform.type'", transform={"type": "spinquant"})
_recipe_case("transform unknown field", "field 'transform.alpha'", transform={"type": "rotation", "alpha": 0.5})
_recipe_case("transform alone", "field 'transform'", method=DROP, bits=DROP, weight=DROP, kv_cache={"bits": 4},
             transform={"type": "rotation"})
_recipe_case("layers unknown field", "field 'layers.only'", layers={"only": ["*_proj"]})
_recipe_case("calib on a recipe that does not calibrate", "field 'calib'", calib={"samples": 8})


@case("recipe: name not the file name")
def _(c):
    recipe = c.recipe("bad")
    Path(recipe).write_text(json.dumps({**json.loads(Path(recipe).read_text()), "name": "other"}))
    argv, where = c.with_recipe(recipe)
    return argv, where, recipe, "field 'name'", "must equal the file name"


@case("recipe: not YAML")
def _(c):
    recipe = str(c.file("rec/broken.yaml", "name: broken\nbits: [4\n"))
    argv, where = c.with_recipe(recipe)
    return argv, where, recipe, "not valid YAML"


@case("recipe: weight group size not dividing")
def _(c):
    recipe = c.recipe(weight={"group_size": 48, "symmetric": False})
    return c.with_recipe(recipe)[0], "field 'grid'", "recipe 'bad' on arm 'softmax'", "field 'weight.group_size'", \
        "48 does not divide in_features=64"


@case("recipe: layers select nothing")
def _(c):
    recipe = c.recipe(layers={"include": ["*.nothing"]})
    return c.with_recipe(recipe)[0], "field 'grid'", "recipe 'bad' on arm 'softmax'", "selects no linear layer"


@case("recipe: not text")
def _(c):
    recipe = str(c.file("rec/bin.yaml", b"\xff\xfe\x00binary"))
    argv, where = c.with_recipe(recipe)
    return argv, where, recipe, "not UTF-8 text"


@case("recipe: gptq calib samples 0")
def _(c):
    recipe = c.recipe("gptq", method="gptq", weight={"group_size": 32, "symmetric": True}, calib={"samples": 0})
    argv, where = c.with_recipe(recipe)
    return argv, where, recipe, "field 'calib.samples'"


@case("recipe: --recipes folder, bad recipe by name")
def _(c):
    c.recipe("mine", method="awq2")
    return ["--recipes", c.tmp / "rec", *c.run_sweep(c.sweep([{"recipe": "mine"}]))], "field 'grid[0].recipe'", \
        c.tmp / "rec" / "mine.yaml", "unknown method 'awq2'"


# ============================================================================ checkpoints (qbench info)
@case("info: checkpoint missing")
def _(c):
    return ["info", c.tmp / "nothere"], "checkpoint not found", "nothere"


@case("info: a hub id without hf:")
def _(c):
    return ["info", "someorg/some-model"], "needs the prefix hf:"


@case("info: a file, not GGUF")
def _(c):
    path = c.file("notes.txt", "x")
    return ["info", path], path, "not a .gguf file"


@case("info: folder without config.json")
def _(c):
    (c.tmp / "empty").mkdir()
    return ["info", c.tmp / "empty"], c.tmp / "empty", "no config.json"


@case("info: config.json not JSON")
def _(c):
    ck = c.ckpt(write={"config.json": "{hidden_size: 64"})
    return ["info", ck], ck / "config.json", "not valid JSON"


@case("info: num_hidden_layers too small")
def _(c):
    ck = c.ckpt(config={"num_hidden_layers": 1})
    return ["info", ck], ck / "model.safetensors", "num_hidden_layers=1 but the weights have 2 layers", "unexpected"


@case("info: num_hidden_layers too large")
def _(c):
    ck = c.ckpt(config={"num_hidden_layers": 3})
    return ["info", ck], ck / "model.safetensors", "num_hidden_layers=3 but the weights have 2 layers", "missing"


@case("info: num_heads not dividing")
def _(c):
    ck = c.ckpt(config={"num_heads": 3, "num_kv_heads": 1})
    return ["info", ck], ck / "config.json", "do not divide"


@case("info: num_heads 0")
def _(c):
    ck = c.ckpt(config={"num_heads": 0, "num_kv_heads": DROP})
    return ["info", ck], ck / "config.json", "num_heads"


@case("info: hidden_size text")
def _(c):
    ck = c.ckpt(config={"hidden_size": "64"})
    return ["info", ck], ck / "config.json", "hidden_size"


@case("info: attn_impl unknown")
def _(c):
    ck = c.ckpt(config={"attn_impl": "parallel_sparsemax_attn"})
    return ["info", ck], ck / "config.json", "attn_impl='parallel_sparsemax_attn'"


@case("info: weights missing")
def _(c):
    ck = c.ckpt(drop=["model.safetensors"])
    return ["info", ck], ck, "no weights"


@case("info: safetensors header corrupt")
def _(c):
    ck = c.ckpt(write={"model.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all"})
    return ["info", ck], ck / "model.safetensors", "not a valid safetensors file"


@case("info: shard of the index missing")
def _(c):
    ck = c.ckpt(drop=["model.safetensors"],
                write={"model.safetensors.index.json": json.dumps({"weight_map": {"lm_head.weight":
                                                                                     "shard-1.safetensors"}})})
    return ["info", ck], ck / "model.safetensors.index.json", "shard files missing: shard-1.safetensors"


@case("info: GGUF folder with two files")
def _(c):
    for name in ("a.gguf", "b.gguf"):
        c.file(f"gg/{name}", b"GGUF")
    return ["info", c.tmp / "gg"], c.tmp / "gg", "several GGUF files (a.gguf, b.gguf)"


@case("info: GGUF file corrupt")
def _(c):
    path = c.file("broken.gguf", b"GGUF\x03\x00\x00\x00")
    return ["info", path], path, "not a readable GGUF file"


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, tokenizer):
    from test_hf_attention import CONFIGS, save_hf

    return save_hf(tmp_path_factory.mktemp("llama") / "llama", CONFIGS["llama"](), tokenizer)


@case("info: transformers qbench_attention unknown")
def _(c):
    ck = c.ckpt("hf", config={"qbench_attention": "sparsemax"}, source=c.llama)
    return ["info", ck], ck / "config.json", "field 'qbench_attention'", "'sparsemax'"


@case("info: transformers num_hidden_layers mismatch")
def _(c):
    ck = c.ckpt("hf", config={"num_hidden_layers": 3}, source=c.llama)
    return ["info", ck], ck / "model.safetensors", "num_hidden_layers=3 but the weights have 2 layers"


@case("info: transformers model_type unknown")
def _(c):
    ck = c.ckpt("hf", config={"model_type": "no-such-model-type"}, source=c.llama)
    return ["info", ck], ck / "config.json", "config could not be read"


# ============================================================================ command-line arguments
# ---- qbench (no command), qbench sweep
@case("qbench: no command", argparse=True)
def _(c):
    return [], "the following arguments are required: command"


@case("sweep: unknown option", argparse=True)
def _(c):
    return [*c.run_sweep(c.sweep()), "--frobnicate"], "unrecognized arguments: --frobnicate"


for _opt, _value in (("--limit", "0"), ("--limit", "ten"), ("--workers", "0"), ("--cell-timeout", "nan"),
                     ("--device", "tpu")):
    @case(f"sweep: {_opt} {_value}", argparse=True)
    def _(c, opt=_opt, value=_value):
        return [*c.run_sweep(c.sweep()), opt, value], f"argument {opt}", value


@case("sweep: --limit with --no-limit", argparse=True)
def _(c):
    return [*c.run_sweep(c.sweep()), "--limit", "2", "--no-limit"], "not allowed with argument --limit"


@case("sweep: --cpus-per-cell without ray")
def _(c):
    return [*c.run_sweep(c.sweep()), "--cpus-per-cell", "2"], "command line: field '--cpus-per-cell'", \
        "only with --executor ray"


@case("sweep: --workers with ray")
def _(c):
    return [*c.run_sweep(c.sweep()), "--workers", "2", "--executor", "ray"], "command line: field '--workers'"


if not torch.cuda.is_available():
    @case("sweep: --device cuda without CUDA")
    def _(c):
        return [*c.run_sweep(c.sweep()), "--device", "cuda"], "command line: field 'device'", "no CUDA device"


# ---- qbench table / plot
@case("table: results folder missing")
def _(c):
    return ["table", c.tmp / "nothere"], c.tmp / "nothere", "no such results folder"


@case("table: results folder a file")
def _(c):
    path = c.file("cells.json", "{}")
    return ["table", path], path, "is a file, not a results folder"


@case("table: no sweep in the folder")
def _(c):
    (c.tmp / "r" / "cells").mkdir(parents=True)
    return ["table", c.tmp / "r"], c.tmp / "r", "no sweep manifest"


@case("plot: results folder missing")
def _(c):
    return ["plot", c.tmp / "nothere"], c.tmp / "nothere", "no such results folder"


# ---- qbench diagnose
def _diagnose(c, *extra):
    return ["diagnose", c.pair[0], "--out", c.tmp / "diag", "--samples", "2", "--subsamples", "1",
            "--seq-len", "16", *extra]


for _extra, _needles in ((("--samples", "0"), ("--samples",)),
                         (("--samples", "4", "--subsamples", "3"), ("--subsamples 3",)),
                         (("--seq-len", "100000"), ("--seq-len 100000", "256 positions")),
                         (("--chunk", "0"), ("--chunk",)), (("--batch-size", "0"), ("--batch-size",)),
                         (("--label", "a", "b"), ("--label",)),
                         (("--attention", "softmax,softpick"), ("--attention",))):
    @case(f"diagnose: {' '.join(_extra)}")
    def _(c, extra=_extra, needles=_needles):
        return (_diagnose(c, *extra), *needles)


@case("diagnose: checkpoint missing")
def _(c):
    return ["diagnose", c.tmp / "nothere", "--out", c.tmp / "diag"], "checkpoint not found", "nothere"


@case("diagnose: sweep file missing")
def _(c):
    return ["diagnose", c.tmp / "none.yaml", "--out", c.tmp / "diag"], "none.yaml", "no such sweep file"


@case("diagnose: --text missing")
def _(c):
    return (*_diagnose(c, "--text", c.tmp / "none.txt"),), "none.txt"


@case("diagnose: --out a file")
def _(c):
    c.file("diag", "")
    return (*_diagnose(c),), "--out", c.tmp / "diag"


@case("diagnose: --results missing")
def _(c):
    return (*_diagnose(c, "--results", c.tmp / "nothere"),), "--results", c.tmp / "nothere"


@case("diagnose: --samples not a number", argparse=True)
def _(c):
    return _diagnose(c, "--samples", "many"), "argument --samples"


# ---- qbench info
@case("info: no path", argparse=True)
def _(c):
    return ["info"], "path"


# ---- qbench train
def _train(c, *extra, preset=("--preset", "debug"), which=("--attention", "softmax")):
    return ["train", *preset, *which, "--out", c.tmp / "run", "--no-progress", *extra]


for _extra, _needle in ((("--steps", "0"), "--steps"), (("--lr", "2"), "--lr"),
                        (("--processes", "0"), "--processes"), (("--measure-steps", "1"), "--measure-steps"),
                        (("--batch-size", "3", "--processes", "2"), "--batch-size"),
                        (("--corpus", "nothere"), "nothere"),
                        (("--tokens", "none.npy", "--tokenizer", "."), "none.npy"),
                        (("--device", "tpu"), "tpu")):
    @case(f"train: {' '.join(_extra)}")
    def _(c, extra=_extra, needle=_needle):
        return _train(c, *extra), needle


@case("train: unknown preset")
def _(c):
    return _train(c, preset=("--preset", "huge")), "'huge'"


@case("train: no --out")
def _(c):
    return ["train", "--preset", "debug", "--attention", "softmax"], "--out"


@case("train: --out a file")
def _(c):
    c.file("run", "")
    return _train(c), c.tmp / "run", "is a file"


@case("train: retrofit without --from")
def _(c):
    return _train(c, preset=("--preset", "retrofit")), "--from"


@case("train: --from with a preset of its own shape")
def _(c):
    return _train(c, "--from", c.pair[0]), "--from"


@case("train: --from a missing checkpoint")
def _(c):
    return _train(c, "--from", c.tmp / "nothere", preset=("--preset", "retrofit")), "nothere"


@case("train: --pair and --attention", argparse=True)
def _(c):
    return _train(c, "--pair"), "not allowed with argument"


@case("train: no --preset", argparse=True)
def _(c):
    return ["train", "--attention", "softmax"], "--preset"


# ---- qbench data
@case("data: no command", argparse=True)
def _(c):
    return ["data"], "data_command"


@case("data prepare: --heldout missing")
def _(c):
    return ["data", "prepare", "--heldout", c.tmp / "none.txt.gz"], c.tmp / "none.txt.gz"


@case("data prepare: --heldout without documents")
def _(c):
    path = c.file("blank.txt", "\n\n")
    return ["data", "prepare", "--heldout", path], path, "no documents"


@case("data corpus: --vocab-size too small")
def _(c):
    return ["data", "corpus", "--out", c.tmp / "corpus", "--vocab-size", "100"], "--vocab-size"


@case("data corpus: unknown corpus", argparse=True)
def _(c):
    return ["data", "corpus", "--corpus", "huge"], "argument --corpus"


@case("data bundle: corpus missing")
def _(c):
    return ["data", "bundle", "--corpus", c.tmp / "nothere", "--out", c.tmp / "c.tar.xz"], c.tmp / "nothere"


@case("data bundle: --part-mib negative")
def _(c):
    return ["data", "bundle", "--corpus", c.tmp / "nothere", "--out", c.tmp / "c.tar.xz", "--part-mib", "-1"], \
        "--part-mib"


@case("data unbundle: bundle missing")
def _(c):
    return ["data", "unbundle", c.tmp / "none.tar.xz", "--out", c.tmp / "corpus"], c.tmp / "none.tar.xz"


@case("data models: unknown model")
def _(c):
    return ["data", "models", "no-such-model"], "unknown real model 'no-such-model'"


# ---- qbench bench
@case("bench: no command", argparse=True)
def _(c):
    return ["bench"], "bench_command"


for _extra in (("--size", "7B"), ("--layers", "0"), ("--batch", "0"), ("--repeats", "0"), ("--seq-len", "0")):
    @case(f"bench model: {' '.join(_extra)}", argparse=True)
    def _(c, extra=_extra):
        return ["bench", "model", "--size", "tiny", "--device", "cpu", *extra], f"argument {extra[0]}"


@case("bench model: --save a file")
def _(c):
    c.file("saved", "")
    return ["bench", "model", "--size", "tiny", "--device", "cpu", "--save", c.tmp / "saved"], "--save", \
        c.tmp / "saved"


@case("bench eval: --model missing")
def _(c):
    return ["bench", "eval", "--model", c.tmp / "nothere", "--device", "cpu"], "nothere"


@case("bench eval: --tasks unknown")
def _(c):
    return ["bench", "eval", "--model", c.pair[0], "--tasks", "nope", "--device", "cpu"], "'nope'"


@case("bench eval: --limit 0", argparse=True)
def _(c):
    return ["bench", "eval", "--model", c.pair[0], "--tasks", "qb_arc_easy", "--limit", "0"], "argument --limit"


@case("bench eval: --batch-check and --overhead", argparse=True)
def _(c):
    return ["bench", "eval", "--batch-check", "--overhead"], "not allowed with argument"


@case("bench compare-stores: stores without cells")
def _(c):
    (c.tmp / "a").mkdir()
    (c.tmp / "b").mkdir()
    return ["bench", "compare-stores", c.tmp / "a", c.tmp / "b"], c.tmp / "a", "no finished cells"


@case("bench compare-stores: a store that is a file")
def _(c):
    path = c.file("a.json", "{}")
    (c.tmp / "b").mkdir()
    return ["bench", "compare-stores", path, c.tmp / "b"], path


@case("bench compare-stores: --out in a missing folder")
def _(c):
    (c.tmp / "a").mkdir()
    (c.tmp / "b").mkdir()
    return ["bench", "compare-stores", c.tmp / "a", c.tmp / "b", "--out", c.tmp / "no" / "r.md"], "--out", \
        c.tmp / "no"


@case("bench paper-scale: unknown step", argparse=True)
def _(c):
    return ["bench", "paper-scale", "--out", c.tmp / "ps", "--tiny", "--steps", "kernel,warp"], "'warp'"


@case("bench paper-scale: --eval-limit not a number")
def _(c):
    return ["bench", "paper-scale", "--out", c.tmp / "ps", "--tiny", "--eval-limit", "some"], "--eval-limit"


@case("bench paper-scale: --out a file")
def _(c):
    c.file("ps", "")
    return ["bench", "paper-scale", "--out", c.tmp / "ps", "--tiny", "--steps", "kernel"], "--out", c.tmp / "ps"


@case("bench attention: unknown option", argparse=True)
def _(c):
    return ["bench", "attention", "--quick", "--frobnicate"], "unrecognized arguments: --frobnicate"


# ============================================================================ the tests
@pytest.mark.parametrize("name", list(CASES))
def test_refused_before_any_work(name, ctx, capsys):
    build, is_argparse = CASES[name]
    argv, *needles = build(ctx)
    before = files_under(ctx.tmp)
    rc, out, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err and out == "", (out, err)
    assert lines and lines[-1].startswith("qbench") and ": error: " in lines[-1], err
    if is_argparse:
        assert lines[0].startswith("usage: "), err
    else:
        assert len(lines) == 1 and lines[0].startswith(f"qbench {command_of(argv)}: error: "), err
    for needle in needles:
        assert str(needle) in lines[-1], (needle, err)
    assert files_under(ctx.tmp) == before, "files written before the refusal"


def test_no_traceback_end_to_end(ctx, data_dir):
    """The same refusals from `python -m qbench.cli` (three at once: each process imports torch)."""
    cases = [["sweep", ctx.tmp / "none.yaml"], ["info", "someorg/some-model"],
             ["sweep", ctx.sweep(), "--limit", "0"]]
    env = {**os.environ, "QBENCH_DATA": str(data_dir), "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    before = files_under(ctx.tmp)
    procs = [subprocess.Popen([sys.executable, "-m", "qbench.cli", *map(str, argv)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=ctx.tmp) for argv in cases]
    for argv, proc in zip(cases, procs):
        out, err = proc.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert proc.returncode == 2 and "Traceback" not in err and out == "", (argv, out, err)
        assert lines[-1].startswith(f"qbench {argv[0]}: error: "), err
    assert files_under(ctx.tmp) == before
