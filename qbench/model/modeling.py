"""A Llama-style causal LM with the paper's weight names; attention is any kind of qbench.attention.kinds."""
import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..attention import attend
from .config import QBenchConfig


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(config: QBenchConfig, position_ids: torch.Tensor, dtype):
    """cos, sin [B, T, head_dim] of the non-interleaved ("rotate half") RoPE, computed in float32."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, device=position_ids.device).float() / d))
    freqs = position_ids.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


class Attention(nn.Module):
    def __init__(self, config: QBenchConfig):
        super().__init__()
        self.config = config
        h, kvh, d = config.num_heads, config.kv_heads, config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, h * d, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, kvh * d, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, kvh * d, bias=config.qkv_bias)
        self.o_proj = nn.Linear(h * d, config.hidden_size, bias=False)
        self.attn_quant = None     # an attention-side quantizer (qbench.attention: `quant`), or None
        self.attn_observer = None  # a callable given q, k (qbench.attention.attend: `observe`), or None

    def forward(self, x, cos, sin, key_mask, need_weights):
        b, t, _ = x.shape
        d = self.config.head_dim
        q = self.q_proj(x).view(b, t, -1, d).transpose(1, 2)
        k = self.k_proj(x).view(b, t, -1, d).transpose(1, 2)
        v = self.v_proj(x).view(b, t, -1, d).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # key_mask: [B, T] (1 = token) or a [B, 1, T, T] visibility mask (True = visible)
        masks = {"mask": key_mask} if key_mask is not None and key_mask.dim() == 4 else {"key_mask": key_mask}
        out, weights = attend(q, k, v, self.config.attention_kind, need_weights=need_weights,
                              quant=self.attn_quant, observe=self.attn_observer, **masks)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1)), weights


class MLP(nn.Module):
    def __init__(self, config: QBenchConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.mlp_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.mlp_size, bias=False)
        self.down_proj = nn.Linear(config.mlp_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: QBenchConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, key_mask, need_weights):
        attn_out, weights = self.attn(self.attn_norm(x), cos, sin, key_mask, need_weights)
        x = x + attn_out
        return x + self.mlp(self.mlp_norm(x)), weights


class QBenchPreTrainedModel(PreTrainedModel):
    # forward's attention_mask may be a [B, 1, T, T] visibility mask, with position_ids [B, T]:
    # the scorer's shared-context rows (qbench.eval.adapter) rely on it
    accepts_segment_masks = True
    config_class = QBenchConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["Block"]


class QBenchModel(QBenchPreTrainedModel):
    def __init__(self, config: QBenchConfig):
        config.check_supported()
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings

    def set_input_embeddings(self, value):
        self.embeddings = value

    def forward(self, input_ids, attention_mask=None, position_ids=None, output_attentions=False,
                output_hidden_states=False):
        b, t = input_ids.shape
        x = self.embeddings(input_ids)
        if position_ids is None:
            position_ids = torch.arange(t, device=input_ids.device)[None].expand(b, t)
        cos, sin = rope_cos_sin(self.config, position_ids, x.dtype)
        hidden_states, attentions = [x], []
        for layer in self.layers:
            x, weights = layer(x, cos, sin, attention_mask, output_attentions)
            hidden_states.append(x)
            attentions.append(weights)
        x = self.norm(x)
        hidden_states[-1] = x  # as in transformers: the last entry is after the final norm
        return x, (tuple(hidden_states) if output_hidden_states else None), (
            tuple(attentions) if output_attentions else None)


class QBenchForCausalLM(QBenchPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}

    def __init__(self, config: QBenchConfig):
        super().__init__(config)
        self.model = QBenchModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embeddings

    def set_input_embeddings(self, value):
        self.model.embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids, attention_mask=None, position_ids=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **unused):
        x, hidden_states, attentions = self.model(
            input_ids, attention_mask, position_ids, bool(output_attentions), bool(output_hidden_states))
        logits = self.lm_head(x)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=hidden_states, attentions=attentions)
