"""qbench: does softmax or softpick attention survive quantization better?

Importing qbench registers the model with transformers' Auto classes.
"""
from .quant.formats import quiet_torchao_import

quiet_torchao_import()  # transformers imports torchao (when installed) with qbench.model: no CPU-only noise
from . import model  # noqa: E402, F401  (registers model_type "transformer")

__version__ = "0.1.0"
