"""qbench: does softmax or softpick attention survive quantization better?

Importing qbench registers the model with transformers' Auto classes.
"""
from . import model  # noqa: F401  (registers model_type "transformer")

__version__ = "0.1.0"
