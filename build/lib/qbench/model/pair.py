"""Arms and pairs: checkpoints compared with each other. A pair is two arms (softmax, softpick)
that differ only in attention; `check_arms` checks N arms for a shared architecture and tokenizer."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .loading import (ARCHITECTURE_FIELDS, Checkpoint, CheckpointError, CheckpointInfo, inspect_checkpoint,
                      load_model, tokenizer_fingerprint)

PairError = CheckpointError


@dataclass
class Pair:
    softmax: Checkpoint
    softpick: Checkpoint

    def __iter__(self):
        return iter((self.softmax, self.softpick))


def arm_differences(infos: list[CheckpointInfo]) -> list[str]:
    """What differs between the checkpoints besides their attention: architecture fields
    ("hidden_size: 64 vs 128") and the tokenizer. Empty when they are one model."""
    diffs = []
    for name in ARCHITECTURE_FIELDS:
        values = [i.architecture_fields.get(name) for i in infos]
        if len(set(map(repr, values))) > 1:
            diffs.append(f"{name}: {' vs '.join(map(str, values))}")
    prints = [tokenizer_fingerprint(i.source) for i in infos]
    if any(p != prints[0] for p in prints[1:]):
        kinds_of_print = {tuple(sorted(p)) for p in prints}
        if len(kinds_of_print) == 1 or not _same_vocab(infos):
            diffs.append("tokenizer: the tokenizer files differ (" + " vs ".join(i.path for i in infos) + ")")
    return diffs


def _same_vocab(infos: list[CheckpointInfo]) -> bool:
    """Tokenizers stored differently (GGUF metadata vs files): compare the loaded vocabularies."""
    from transformers import AutoTokenizer

    vocabs = [AutoTokenizer.from_pretrained(i.source.folder, gguf_file=i.source.gguf_file,
                                            local_files_only=True).get_vocab() for i in infos]
    return all(v == vocabs[0] for v in vocabs[1:])


def check_arms(arms, compare: str = "arms") -> list[CheckpointInfo]:
    """Inspect every arm (path, attention or None) strictly and return their infos. With
    compare="arms" (arms differ only in attention) raise CheckpointError naming what differs;
    compare="models" (different models, each against its own full precision) checks each alone."""
    if compare not in ("arms", "models"):
        raise CheckpointError(f"compare must be 'arms' or 'models', got {compare!r}")
    infos = [inspect_checkpoint(path, attention) for path, attention in arms]
    if compare == "arms" and len(infos) > 1:
        diffs = arm_differences(infos)
        if diffs:
            raise CheckpointError("the arms are not one model with different attention kinds, "
                                  "they differ in " + "; ".join(diffs)
                                  + " (a sweep comparing different models says compare: models)")
    return infos


def check_pair(softmax_path, softpick_path) -> None:
    """Cheap checks (headers, configs and tokenizer files only) that the two are a pair; raises PairError."""
    infos = []
    for kind, path in (("softmax", softmax_path), ("softpick", softpick_path)):
        infos.append(inspect_checkpoint(path))
        if infos[-1].attention != kind:
            raise PairError(f"{path} was given as the {kind} model but its attention is {infos[-1].attention} "
                            f"({infos[-1].attention_source})")
    diffs = arm_differences(infos)
    if diffs:
        raise PairError("not a pair, they differ in " + "; ".join(diffs))


def load_pair(softmax_path, softpick_path, device="cpu", dtype=torch.float32) -> Pair:
    """Both models of a pair, after checking that they are one."""
    check_pair(softmax_path, softpick_path)
    pair = Pair(load_model(softmax_path, None, device, dtype), load_model(softpick_path, None, device, dtype))
    if pair.softmax.tokenizer.get_vocab() != pair.softpick.tokenizer.get_vocab():
        raise PairError("not a pair: the tokenizers' vocabularies differ")
    return pair
