"""qbench.quant: quantization methods behind one interface.

    from qbench.quant import load_recipe, quantize, calibration_batch
    recipe = load_recipe("gptq")                     # recipes/gptq.yaml, validated
    calib = recipe_calibration(recipe, tok, heldout_path)   # or calibration_batch(...)
    report = quantize(model, recipe, bits=4, calib=calib)   # model changed in place
    report.to_dict()                                  # layers, bits/weight, errors

Weight methods live one per module in this package (rtn, hqq, gptq, bnb, quanto; fp8, mxfp4 and
nvfp4 in formats) and register themselves; the other recipe sections have one module each
(activation, attn for kv_cache / attention, smoothquant and rotation for transform).
See README.md in this folder for adding a recipe or a method.
"""
from .base import (Field, LayerwiseMethod, Method, MethodUnavailable, QuantError,
                   QuantizerDidNothing, RecipeError, get_method, methods, register)
from .calib import calibration_batch, recipe_calibration
from .core import (LayerReport, QuantReport, code_versions, library_versions,
                   check_fits, quantize, select_layers)
from .recipe import (ActivationConfig, AttentionConfig, KVCacheConfig, Recipe, TransformConfig, available_recipes,
                     load_recipe, parse_recipe)

__all__ = [
    "Field", "LayerwiseMethod", "Method", "MethodUnavailable", "QuantError", "QuantizerDidNothing",
    "RecipeError", "get_method", "methods", "register", "calibration_batch", "recipe_calibration",
    "LayerReport", "QuantReport", "code_versions", "library_versions", "quantize", "select_layers", "check_fits",
    "Recipe", "ActivationConfig", "AttentionConfig", "KVCacheConfig", "TransformConfig", "available_recipes",
    "load_recipe", "parse_recipe",
]
