"""Config of the paper's checkpoint format (flash-linear-attention "transformer")."""
from transformers import PretrainedConfig

from ..attention import kinds


class QBenchConfig(PretrainedConfig):
    model_type = "transformer"
    attribute_map = {"num_attention_heads": "num_heads"}

    def __init__(
        self,
        hidden_size: int = 1024,
        num_hidden_layers: int = 24,
        num_heads: int = 16,
        num_kv_heads: int | None = None,
        hidden_ratio: float = 4,
        intermediate_size: int | None = None,
        hidden_act: str = "swish",
        norm_eps: float = 1e-6,
        rope_theta: float = 10000.0,
        max_position_embeddings: int = 2048,
        vocab_size: int = 32000,
        attn_impl: str = "parallel_attn",
        qkv_bias: bool = False,
        qk_norm: bool = False,
        window_size: int | None = None,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = False,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        pad_token_id: int | None = None,
        **kwargs,
    ):
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.hidden_ratio = hidden_ratio
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.norm_eps = norm_eps
        self.rope_theta = rope_theta
        self.max_position_embeddings = max_position_embeddings
        self.vocab_size = vocab_size
        self.attn_impl = attn_impl
        self.qkv_bias = qkv_bias
        self.qk_norm = qk_norm
        self.window_size = window_size
        self.initializer_range = initializer_range
        super().__init__(
            tie_word_embeddings=tie_word_embeddings,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            **kwargs,
        )

    @property
    def attention_kind(self) -> str:
        """The kind forced at load (`qbench_attention`, see qbench.model.load_model), else attn_impl's."""
        forced = getattr(self, "qbench_attention", None)
        return kinds.get(forced).name if forced else kinds.kind_of_attn_impl(self.attn_impl)

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_size(self) -> int:
        """intermediate_size, or int(hidden * hidden_ratio * 2/3) rounded up to a multiple of 256."""
        if self.intermediate_size:
            return self.intermediate_size
        n = int(self.hidden_size * self.hidden_ratio * 2 / 3)
        return 256 * ((n + 255) // 256)

    def check_supported(self) -> None:
        """Refuse what this implementation does not compute, instead of computing it wrongly."""
        problems = []
        if self.attn_impl not in kinds.ATTN_IMPLS:
            problems.append(f"attn_impl={self.attn_impl!r} (supported: {sorted(kinds.ATTN_IMPLS)})")
        if self.qk_norm:
            problems.append("qk_norm=true")
        if self.window_size is not None:
            problems.append(f"window_size={self.window_size}")
        if self.hidden_act not in ("swish", "silu"):
            problems.append(f"hidden_act={self.hidden_act!r}")
        if self.hidden_size % self.num_heads or self.num_heads % self.kv_heads:
            problems.append("hidden_size/num_heads/num_kv_heads do not divide")
        if problems:
            raise ValueError("unsupported checkpoint config: " + ", ".join(problems))
