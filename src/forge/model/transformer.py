"""The decoder-only transformer: token ids → next-token logits. Architecture only (no training, no I/O).

Design choices:
- Llama architecture (rotary positions, RMSNorm, SwiGLU, grouped-query attention, no biases) with HF's
  module tree (`model.embed_tokens`, `model.layers.{i}`, `model.norm`, `lm_head`), so export to
  `transformers.LlamaForCausalLM` is a rename-free copy of the state dict;
- optional tied embeddings: `lm_head.weight` *is* `model.embed_tokens.weight`;
- rotary cos/sin tables are non-persistent buffers (recomputed, never saved), indexed by `positions`;
- with a KV cache, the mask `slot <= position` is built once per forward and shared by all layers;
- packed training rows (`segments`) get a block-diagonal causal mask and positions that restart with each
  segment, so conversations packed together never attend to each other;
- GPT-2 style init: normal(0, init_std), residual output projections scaled by 1/√(2 · num_layers);
- logits come back in float32 whatever the compute dtype, for a stable softmax / cross-entropy;
- `activation_checkpointing` (a training switch, not part of the config): each block's activations are
  recomputed in the backward pass instead of kept, trading about a third more compute for memory that
  no longer grows with the number of layers.
"""

import math

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from forge.model.config import ModelConfig
from forge.model.layers import Block, KVCacheLike, RMSNorm, precompute_rope


def segment_positions_and_mask(segments: Tensor) -> tuple[Tensor, Tensor]:
    """For packed rows with segment ids (B, T): each token's position within its segment (B, T) and the
    block-diagonal causal mask (B, 1, T, T), True where a query may attend to a key."""
    B, T = segments.shape
    index = torch.arange(T, device=segments.device).expand(B, T)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]  # a new segment begins here
    first = torch.cummax(torch.where(starts, index, torch.zeros_like(index)), dim=1).values  # (B, T)
    positions = index - first
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    same = segments[:, :, None] == segments[:, None, :]  # (B, T, T)
    return positions, (same & causal)[:, None]


class Decoder(nn.Module):
    """The body: embeddings, blocks, final norm (HF's `LlamaModel`, without its extras)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)


class Transformer(nn.Module):
    """A decoder-only language model; `forward(input_ids)` returns float32 logits (B, T, vocab_size)."""

    rope_cos: Tensor
    rope_sin: Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        cos, sin = precompute_rope(config.head_dim, config.context_length, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # (context_length, head_dim)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.activation_checkpointing = False
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, init_std) weights; o_proj / down_proj scaled by 1/√(2 · num_layers); norms at 1."""
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.num_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                is_residual = name.endswith(("o_proj", "down_proj"))
                nn.init.normal_(module.weight, mean=0.0, std=residual_std if is_residual else std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def forward(
        self,
        input_ids: Tensor,
        *,
        positions: Tensor | None = None,
        cache: KVCacheLike | None = None,
        segments: Tensor | None = None,
    ) -> Tensor:
        """input_ids (B, T) at `positions` (B, T), default 0..T-1 → logits (B, T, vocab_size) in float32.
        The options are those of `hidden_states`."""
        hidden = self.hidden_states(input_ids, positions=positions, cache=cache, segments=segments)
        return self.lm_head(hidden).float()  # (B, T, V)

    def hidden_states(
        self,
        input_ids: Tensor,
        *,
        positions: Tensor | None = None,
        cache: KVCacheLike | None = None,
        segments: Tensor | None = None,
    ) -> Tensor:
        """The final normalised hidden states (B, T, dim), which `lm_head` turns into logits (a reward or
        value head reads them too).

        With `cache`, new keys/values are stored at `positions` and every query attends to the cached slots
        at or before its own position. With `segments` (B, T), several sequences packed in one row are
        kept apart: a token attends only to earlier tokens of its own segment (equal id, contiguous), and
        positions restart at 0 with each segment.
        """
        B, T = input_ids.shape
        attn_mask = None
        if segments is not None:
            positions, attn_mask = segment_positions_and_mask(segments)
        if positions is None:
            if self.config.context_length < T:
                raise ValueError(f"{T} tokens exceed the context length {self.config.context_length}")
            positions = torch.arange(T, device=input_ids.device).expand(B, T)  # (B, T)
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # (B, T, D)
        if cache is not None:
            slots = torch.arange(self.config.context_length, device=input_ids.device)
            attn_mask = slots[None, None, None, :] <= positions[:, None, :, None]  # (B, 1, T, context_length)
        x = self.model.embed_tokens(input_ids)  # (B, T, C)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        recompute = (
            self.activation_checkpointing and self.training and torch.is_grad_enabled() and cache is None
        )
        for layer, block in enumerate(self.model.layers):
            if recompute:
                x = torch.utils.checkpoint.checkpoint(
                    block, x, cos, sin, attn_mask=attn_mask, use_reentrant=False
                )
            else:
                x = block(x, cos, sin, cache=cache, layer=layer, positions=positions, attn_mask=attn_mask)
        return self.model.norm(x)  # (B, T, C)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (a tied matrix once); `exclude_embeddings` drops embedding and untied lm_head."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            total -= self.model.embed_tokens.weight.numel()
            if not self.config.tie_embeddings:
                total -= self.lm_head.weight.numel()
        return total
