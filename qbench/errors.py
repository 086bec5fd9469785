"""The one error base class: every user-facing error of qbench derives from it, and the CLI
catches it once (`qbench <command>: error: <message>`, exit 2)."""


class QBenchError(Exception):
    """A user-facing error: the message says what is wrong (file and field) and how to fix it."""


def one_line(err: BaseException) -> str:
    """`Type: message` of another library's exception, on one line (its first paragraph, whitespace
    collapsed), for a QBenchError that quotes it: the CLI prints each error as one line."""
    first = str(err).strip().split("\n\n")[0]
    return f"{type(err).__name__}: {' '.join(first.split())}"
