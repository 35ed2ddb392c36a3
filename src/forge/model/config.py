"""The model's shape: `ModelConfig`, named presets, and the parameter / FLOP arithmetic.

Design choices:
- one frozen dataclass, a docstring per field (they become `--help`), validated in `__post_init__`;
- the feed-forward width defaults to SwiGLU's 8/3 · dim (which keeps the MLP's parameter count equal to a
  4 · dim GELU MLP), rounded up to a multiple of 64 so matmuls stay on fast kernel paths;
- presets are plain dicts of overrides without `vocab_size`: the vocabulary comes from the tokenizer, so a
  preset's parameter count depends on it (the sizes named below are measured at vocab_size 8192);
- `flops_per_token` is the PaLM / nanoGPT MFU formula: 6 N for the matmuls of forward + backward plus
  12 · L · H · D · T for attention scores and their weighted sum.
"""

import math
from dataclasses import dataclass

from forge.errors import ConfigError

FFN_MULTIPLE = 64


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shape of a decoder-only transformer (Llama architecture: RoPE, RMSNorm, SwiGLU, GQA, no biases)."""

    vocab_size: int = 512
    """number of token ids (embedding rows); taken from the tokenizer when training"""
    context_length: int = 128
    """longest sequence the model handles (number of rotary positions)"""
    dim: int = 64
    """width of the residual stream (hidden size)"""
    num_layers: int = 2
    """number of transformer blocks"""
    num_heads: int = 4
    """number of query heads; must divide --dim"""
    num_kv_heads: int = 4
    """number of key/value heads (grouped-query attention); must divide --num-heads"""
    intermediate_size: int = 0
    """feed-forward width; 0 = auto: 8/3 * dim rounded up to a multiple of 64"""
    rope_theta: float = 10000.0
    """rotary embedding base (larger = longer wavelengths)"""
    norm_eps: float = 1e-5
    """epsilon inside RMSNorm"""
    tie_embeddings: bool = True
    """share one matrix between the input embedding and the output projection (lm_head)"""
    init_std: float = 0.02
    """standard deviation of the normal weight initialisation"""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "dim", "num_layers", "num_heads", "num_kv_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")
        if self.dim % self.num_heads:
            raise ConfigError(
                f"model.num_heads ({self.num_heads}) must divide model.dim ({self.dim}); "
                "change one so that dim / num_heads is a whole number"
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"model.num_kv_heads ({self.num_kv_heads}) must divide model.num_heads ({self.num_heads})"
            )
        if self.head_dim % 2:
            raise ConfigError(
                f"model.num_heads: head size dim / num_heads = {self.head_dim} must be even for rotary "
                "embeddings; choose another number of heads"
            )
        if self.intermediate_size < 0:
            raise ConfigError(
                f"model.intermediate_size must be >= 0 (0 = auto), got {self.intermediate_size!r}"
            )
        if self.rope_theta <= 0:
            raise ConfigError(f"model.rope_theta must be > 0, got {self.rope_theta}")
        if not 0 < self.norm_eps < 1:
            raise ConfigError(f"model.norm_eps must be in (0, 1), got {self.norm_eps}")
        if self.init_std <= 0:
            raise ConfigError(f"model.init_std must be > 0, got {self.init_std}")

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.dim // self.num_heads

    @property
    def ffn_dim(self) -> int:
        """Feed-forward width actually used (`intermediate_size`, or the automatic value for 0)."""
        if self.intermediate_size:
            return self.intermediate_size
        return math.ceil(8 * self.dim / 3 / FFN_MULTIPLE) * FFN_MULTIPLE


# Overrides of ModelConfig's defaults. Sizes are at vocab_size 8192 (tied embeddings); the real count
# depends on the tokenizer's vocabulary: tiny ≈ 1.2M, small ≈ 10M, base ≈ 52M, gpt2-124m ≈ 124M.
PRESETS: dict[str, dict] = {
    "tiny": dict(context_length=256, dim=96, num_layers=4, num_heads=4, num_kv_heads=4),
    "small": dict(context_length=512, dim=256, num_layers=10, num_heads=8, num_kv_heads=8),
    "base": dict(context_length=1024, dim=512, num_layers=15, num_heads=8, num_kv_heads=8),
    "gpt2-124m": dict(
        vocab_size=50304, context_length=1024, dim=768, num_layers=12, num_heads=12, num_kv_heads=12
    ),
}


def model_preset(name: str, **overrides: object) -> ModelConfig:
    """The config of preset `name` with `overrides` applied (e.g. `model_preset("tiny", vocab_size=4096)`)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})


def estimate_params(config: ModelConfig) -> int:
    """Number of parameters of `Transformer(config)` (a tied embedding counted once)."""
    D, F = config.dim, config.ffn_dim
    kv_dim = config.num_kv_heads * config.head_dim
    attention = 2 * D * D + 2 * D * kv_dim  # q, o: D x D; k, v: D x kv_dim
    mlp = 3 * D * F  # gate, up, down
    per_layer = attention + mlp + 2 * D  # two RMSNorm weights
    embeddings = config.vocab_size * D * (1 if config.tie_embeddings else 2)
    return config.num_layers * per_layer + D + embeddings  # + final norm


def flops_per_token(config: ModelConfig, seq_len: int) -> int:
    """Training FLOPs (forward + backward) per token at `seq_len`: 6 N + 12 · L · H · D · T.

    N counts the weights that take part in matmuls: every non-embedding weight plus the output projection
    (the input embedding is a lookup). The attention term counts the full T x T score matrix, as the PaLM
    paper and nanoGPT do, although causal kernels skip about half of it.
    """
    non_embedding = estimate_params(config) - config.vocab_size * config.dim * (
        1 if config.tie_embeddings else 2
    )
    matmul_params = non_embedding + config.vocab_size * config.dim
    attention = 12 * config.num_layers * config.num_heads * config.head_dim * seq_len
    return 6 * matmul_params + attention
