"""Calibration batches from held-out text: format, determinism, clear errors."""
import gzip

import pytest
import torch

from qbench.quant.calib import DOC_SEP, calibration_batch, read_documents, recipe_calibration
from qbench.quant import load_recipe

DOCS = [("In the beginning was the word, and the word was with God. " * 12).strip(),
        ("It was the best of times, it was the worst of times. " * 12).strip(),
        ("The quick brown fox jumps over the lazy dog. " * 12).strip()]


def text_file(tmp_path, gz):
    body = f"\n{DOC_SEP}\n".join(DOCS) + "\n"
    p = tmp_path / ("heldout.txt.gz" if gz else "heldout.txt")
    p.write_bytes(gzip.compress(body.encode()) if gz else body.encode())
    return p


@pytest.mark.parametrize("gz", [False, True])
def test_documents_split_on_record_separator(tmp_path, gz):
    assert read_documents(text_file(tmp_path, gz)) == DOCS


def test_batch_shape_determinism_and_content(tmp_path, tokenizer):
    p = text_file(tmp_path, gz=True)
    a = calibration_batch(tokenizer, p, 6, 16, seed=0)
    assert a.dtype == torch.long and a.shape == (6, 16)
    assert torch.equal(a, calibration_batch(tokenizer, p, 6, 16, seed=0))
    assert torch.equal(a, calibration_batch(tokenizer, text_file(tmp_path, gz=False), 6, 16, seed=0))
    assert not torch.equal(a, calibration_batch(tokenizer, p, 6, 16, seed=1))
    # windows are distinct pieces of the token stream, which starts each document with <s>
    assert len({tuple(r.tolist()) for r in a}) == 6
    stream = []
    for d in DOCS:
        stream += [tokenizer.bos_token_id] + tokenizer(d, add_special_tokens=False)["input_ids"]
    s = ",".join(map(str, stream))
    for row in a:
        assert ",".join(map(str, row.tolist())) in s


def test_tokenizers_library_tokenizer(tmp_path, tokenizer):
    raw = tokenizer.backend_tokenizer    # a `tokenizers.Tokenizer`: no BOS attribute
    b = calibration_batch(raw, text_file(tmp_path, gz=False), 4, 16, seed=0)
    assert b.shape == (4, 16)


def test_too_little_text_is_a_clear_error(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="fewer than the 1000 samples"):
        calibration_batch(tokenizer, text_file(tmp_path, gz=False), 1000, 64, seed=0)


def test_recipe_calibration_uses_the_recipe_fields(tmp_path, tokenizer):
    r = load_recipe("gptq").replace(calib={"samples": 3, "seq_len": 8, "seed": 5})
    b = recipe_calibration(r, tokenizer, text_file(tmp_path, gz=False))
    assert torch.equal(b, calibration_batch(tokenizer, text_file(tmp_path, gz=False), 3, 8, 5))
