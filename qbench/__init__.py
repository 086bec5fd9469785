"""qbench: does softmax or softpick attention survive quantization better?

Importing qbench registers the model with transformers' Auto classes.
"""
import logging

# transformers imports torchao when it is installed; on a CPU build torchao logs a warning per
# CUDA extension it cannot load, and torch one per Enum torchao registers: noise on every command.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

from . import model  # noqa: E402,F401  (registers model_type "transformer")

__version__ = "0.1.0"
