"""Training presets as plain data: model shape (config.json fields) and the training recipe.

A preset is everything that fixes a run except the seed and the data: two runs of one preset
with one seed on one token file differ only in the attention kind. `steps`, `batch_size`
(global: sequences per step over all data-parallel processes), `micro_batch` (sequences per
forward pass per process; gradient accumulation, for memory) and `lr` can be overridden on the
command line (recorded in train_summary.json). A preset whose `model` is None continues an
existing checkpoint (`qbench train --from PATH`): its shape and tokenizer come from there.

Time on one H200 (bf16 autocast, batch 64 x 512 tokens; plain torch, from feasibility.md):
small softmax ~44 ms/step; softpick runs the Triton kernel on CUDA and costs about the same.
"""

# fields shared by every preset (the recipe of softpick's paper and of feasibility.md)
COMMON = {
    "optimizer": {"name": "adamw", "betas": [0.9, 0.95], "eps": 1e-15, "weight_decay": 0.1,
                  "decay": "matrices only (ndim >= 2: embeddings and linear weights; not norms)"},
    "schedule": {"name": "linear warmup, then cosine to min_lr_ratio * peak"},
    "min_lr_ratio": 0.1,
    "grad_clip": 1.0,
    "autocast": "bfloat16 on CUDA (fp32 master weights); float32 on CPU",
}

PRESETS = {
    # for tests and smoke runs: seconds on a CPU; the vocabulary comes from the tokenizer
    "debug": {
        "model": {"hidden_size": 128, "num_hidden_layers": 2, "num_heads": 2, "intermediate_size": 256,
                  "vocab_size": None, "tie_word_embeddings": True},
        "context": 64, "batch_size": 8, "steps": 20, "warmup_steps": 2, "lr": 3e-3,
        "eval_windows": 8, "save_dtype": "float32",
    },
    # the bundled default pair: ~4.72M parameters, model.safetensors ~9.4 MB in bf16 (tied head);
    # 8000 steps x 64 x 512 = 262M tokens seen (feasibility.md: softpick's quantization
    # advantage needs hundreds of millions of tokens)
    "tiny": {
        "model": {"hidden_size": 256, "num_hidden_layers": 4, "num_heads": 4, "intermediate_size": 512,
                  "vocab_size": 8192, "tie_word_embeddings": True},
        "context": 512, "batch_size": 64, "steps": 8000, "warmup_steps": 200, "lr": 2e-3,
        "eval_windows": 64, "save_dtype": "bfloat16",
    },
    # ~35.7M parameters (untied head, MLP 1536); 5000 steps x 64 x 512 = 164M tokens seen:
    # at ~45 ms/step per model the pair takes ~8 minutes on one H200
    "small": {
        "model": {"hidden_size": 512, "num_hidden_layers": 8, "num_heads": 8, "hidden_ratio": 4,
                  "vocab_size": 8192, "tie_word_embeddings": False},
        "context": 512, "batch_size": 64, "steps": 5000, "warmup_steps": 200, "lr": 1e-3,
        "eval_windows": 64, "save_dtype": "bfloat16",
    },
    # 135.3M parameters with a 32768-token tokenizer (the large corpus's; untied head): the layers
    # are GPT-2 small's 85M (hidden 768, 12 layers, 12 heads; a SwiGLU MLP of 2048 has the
    # parameters of GPT-2's 3072-wide GELU MLP). 2000 steps x 512 x 1024 = 1.05B tokens seen.
    # micro_batch 32 x 1024 tokens per forward pass per GPU (memory); the global batch is split
    # over the data-parallel processes first (e.g. 4 GPUs: 128 each, 4 micro-batches).
    "medium": {
        "model": {"hidden_size": 768, "num_hidden_layers": 12, "num_heads": 12, "intermediate_size": 2048,
                  "vocab_size": None, "tie_word_embeddings": False},
        "context": 1024, "batch_size": 512, "micro_batch": 32, "steps": 2000, "warmup_steps": 200, "lr": 6e-4,
        "eval_windows": 64, "save_dtype": "bfloat16",
    },
    # continued training of a pretrained model (`--from`; issue 15's retrofit of SmolLM2-135M):
    # the probe of real-models.md (16 x 1024 tokens per step, lr 1e-4, warmup 50, cosine to 10 %,
    # wd 0.1, clip 1.0); 6000 steps = 98M tokens per arm
    "retrofit": {
        "model": None,
        "context": 1024, "batch_size": 16, "micro_batch": 16, "steps": 6000, "warmup_steps": 50, "lr": 1e-4,
        "eval_windows": 32, "save_dtype": "bfloat16",
    },
}
