"""Diagnostics that explain quantization numbers: the paper's Table 2 (sink rate, hidden-state
kurtosis, min / max activation, attention sparsity) plus, per layer, the largest activation at
the inputs of the linear layers and the weight quantization error from a sweep's cells.

    result = diagnose_arms([(label, checkpoint), ...], text_path)   # or diagnose([path, ...])
    write_diagnostics(result, out_dir)                 # diagnostics.{md,csv,png,json}
    markdown_table(result)                             # the Table 2 block alone, for a report
"""
from .api import DEFAULT_TEXT, DiagnosticsError, diagnose, diagnose_arms, diagnose_pair
from .metrics import Moments, activation_extremes, attention_sparsity, first_token_attention, kurtosis, sink_rate
from .output import markdown, markdown_table, write_diagnostics
from .quant_error import read_quant_errors

__all__ = ["DEFAULT_TEXT", "DiagnosticsError", "Moments", "activation_extremes", "attention_sparsity", "diagnose",
           "diagnose_arms", "diagnose_pair",
           "first_token_attention", "kurtosis", "markdown", "markdown_table", "read_quant_errors", "sink_rate",
           "write_diagnostics"]
