"""Errors of the evaluation area: each says what is wrong and how to fix it (the CLI prints them
without a traceback)."""
from ..errors import QBenchError


class EvalError(QBenchError, ValueError):
    """Base class of qbench.eval's user-facing errors."""


class UnknownTaskError(EvalError):
    """A task or task-set name that does not exist (the message lists the valid ones)."""


class TaskDataError(EvalError):
    """Task data not prepared, stale, or not what it should be (the message names the command)."""


class TokenizerError(EvalError):
    """The tokenizer cannot be used for scoring (e.g. neither bos nor eos)."""
