"""Shared by the training tests: a tiny corpus folder like `qbench data corpus` writes, and the
RunSpec of a debug run on it (CPU, seconds)."""
import csv
import random

from conftest import TEXT, make_tokenizer
from qbench.train import train as T
from qbench.train.corpus import DOC_LINE

STEPS = 20


def make_corpus(root):
    """train.txt, heldout_eval.txt, tokenizer/ and the token file encoded with encode_corpus."""
    from qbench.train.tokenizer import encode_corpus

    sentences = [s.strip() + "." for s in TEXT.split(".") if s.strip()][:4]
    rng = random.Random(0)

    def doc():
        return " ".join(rng.choice(sentences) for _ in range(rng.randint(5, 30)))

    (root / "train.txt").write_text(DOC_LINE.join(doc() for _ in range(200)) + "\n")
    (root / "heldout_eval.txt").write_text(DOC_LINE.join(doc() for _ in range(20)) + "\n")
    make_tokenizer().save_pretrained(root / "tokenizer")
    encode_corpus(root, root / "tokenizer", root / "train.tokens.u16")
    return root


def spec(corpus_dir, out, kind="softmax", **changes):
    fields = dict(preset="debug", kind=kind, out=str(out) if out else None, seed=0, steps=STEPS,
                  tokens=str(corpus_dir / "train.tokens.u16"), tokenizer=str(corpus_dir / "tokenizer"),
                  heldout=str(corpus_dir / "heldout_eval.txt"), device="cpu", progress=False, log_every=5,
                  command="qbench train (test)")
    fields.update(changes)
    return T.RunSpec(**fields)


def read_log(folder):
    with open(folder / T.LOG_FILE) as f:
        return list(csv.DictReader(f))
