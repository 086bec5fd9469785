"""A byte-level BPE tokenizer trained on the corpus, and the corpus as a flat array of token ids.

`train_tokenizer` writes the standard files (tokenizer.json, tokenizer_config.json,
special_tokens_map.json), so `transformers.AutoTokenizer.from_pretrained(dir)` loads it
offline. Special tokens, Llama-style: `<unk>`=0, `<s>`=1 (bos, added in front of every
encoding), `</s>`=2 (eos). Byte-level BPE never needs `<unk>`; it doubles as the pad token.

`encode_corpus` needs only `tokenizers` and numpy (it also runs on GPU machines that have
nothing else): each document becomes `<s>` + tokens + `</s>`, all concatenated, uint16.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from qbench.train.corpus import CorpusError, progress, read_documents

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
SPECIAL_TOKENS = [UNK, BOS, EOS]          # ids 0, 1, 2
MIN_FREQUENCY = 2


def split_file(corpus_dir: Path, split: str) -> Path:
    for name in (f"{split}.txt", f"{split}.txt.gz"):
        if (corpus_dir / name).is_file():
            return corpus_dir / name
    raise CorpusError(f"no {split}.txt in {corpus_dir} (build the corpus first: `qbench data corpus`)")


def check_vocab_size(vocab_size: int) -> None:
    """CorpusError unless the vocabulary holds the 256 bytes and the special tokens and fits uint16 ids."""
    if not 256 + len(SPECIAL_TOKENS) < vocab_size <= 65536:
        raise CorpusError(f"vocab_size (--vocab-size) must be in (259, 65536] (uint16 ids), got {vocab_size}")


def build_tokenizer(documents, vocab_size: int = 8192):
    """A `tokenizers.Tokenizer` (byte-level BPE) trained on an iterable of texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    check_vocab_size(vocab_size)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=MIN_FREQUENCY,
                                  special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(documents, trainer)
    if [tok.token_to_id(t) for t in SPECIAL_TOKENS] != [0, 1, 2]:
        raise RuntimeError("special tokens did not get ids 0, 1, 2")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 1)])
    return tok


def save_tokenizer(tok, out_dir, model_max_length: int = 2048) -> Path:
    """Save as a transformers fast tokenizer: tokenizer.json, tokenizer_config.json (class
    PreTrainedTokenizerFast, which transformers 4 and 5 both load) and special_tokens_map.json."""
    from transformers import PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": UNK}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length,
                                   clean_up_tokenization_spaces=False, **special)
    fast.save_pretrained(str(out_dir))
    config_file = out_dir / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config.update(special, tokenizer_class="PreTrainedTokenizerFast", clean_up_tokenization_spaces=False)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    return out_dir


def train_tokenizer(corpus_dir, out_dir, vocab_size: int = 8192) -> Path:
    """Train a byte-level BPE on the corpus's train split (never on held-out text) and save it
    to `out_dir` in the standard files. Deterministic for the same corpus."""
    corpus_dir = Path(corpus_dir)
    docs = read_documents(split_file(corpus_dir, "train"))
    print(f"training a {vocab_size}-token byte-level BPE on {len(docs)} documents ...", flush=True)
    return save_tokenizer(build_tokenizer(docs, vocab_size), out_dir)


def encode_corpus(corpus_dir, tokenizer_dir, out_path, split: str = "train", batch_size: int = 1024):
    """Write the split's documents as one flat uint16 array (`numpy.save` format):
    `<s>` + tokens + `</s>` for each document, in file order. Returns the array."""
    import numpy as np
    from tokenizers import Tokenizer

    tokenizer_file = Path(tokenizer_dir) / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise CorpusError(f"no tokenizer.json in {tokenizer_dir} (train it first: `qbench data corpus`)")
    tok = Tokenizer.from_file(str(tokenizer_file))
    if tok.get_vocab_size() > 65536:
        raise CorpusError(f"vocabulary of {tok.get_vocab_size()} does not fit uint16")
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    if bos is None or eos is None:
        raise CorpusError(f"{tokenizer_file} has no {BOS} / {EOS} tokens")
    docs = read_documents(split_file(Path(corpus_dir), split))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    ids = encode_stream(tok, docs, bos, eos, np.uint16, batch_size, desc=f"encoding {split}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f"{out_path.name}.tmp{os.getpid()}.npy")   # concurrent encoders never collide
    np.save(tmp, ids)
    os.replace(tmp, out_path)
    return ids


def encode_stream(tok, docs: list[str], bos: int, eos: int, dtype, batch_size: int = 1024, desc: str | None = None):
    """<s> doc </s> per document, concatenated: the layout of the training token file. `tok`: a
    `tokenizers.Tokenizer`; `desc`: show a progress bar with this label."""
    import numpy as np

    starts = range(0, len(docs), batch_size)
    parts = []
    for start in progress(starts, desc=desc, unit="batch") if desc else starts:
        for enc in tok.encode_batch(docs[start:start + batch_size], add_special_tokens=False):
            parts.append(np.asarray([bos, *enc.ids, eos], dtype=dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
