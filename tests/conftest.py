"""Shared fixtures: a tiny tokenizer and tiny random pairs saved on disk (fast, offline)."""
import pytest
import torch

import qbench  # noqa: F401  (registers the model with transformers)
from qbench.model import new_model, save_checkpoint

# The test models are tiny: one thread is faster, and far faster on a loaded 2-core machine.
torch.set_num_threads(1)

TEXT = ("The quick brown fox jumps over the lazy dog. A bird in the hand is worth two in the bush. "
        "In the beginning was the word, and the word was with God. It was the best of times. ") * 20
TINY = dict(hidden_size=64, num_hidden_layers=2, num_heads=4, num_kv_heads=2, vocab_size=300,
            max_position_embeddings=256)


def make_tokenizer(vocab_size=300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


def save_tiny(folder, kind, tokenizer, seed=0, **overrides):
    fields = {**TINY, **overrides}
    model = new_model(kind, seed=seed, **fields)
    save_checkpoint(model, tokenizer, folder)
    return folder


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory, tokenizer):
    """(softmax_dir, softpick_dir): same random init, only attn_impl differs."""
    root = tmp_path_factory.mktemp("pair")
    return (save_tiny(root / "softmax", "softmax", tokenizer), save_tiny(root / "softpick", "softpick", tokenizer))
