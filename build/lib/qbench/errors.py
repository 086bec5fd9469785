"""The one error base class: every user-facing error of qbench derives from it, and the CLI
catches it once (`qbench <command>: error: <message>`, exit 2)."""


class QBenchError(Exception):
    """A user-facing error: the message says what is wrong (file and field) and how to fix it."""
