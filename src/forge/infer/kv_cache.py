"""The KV cache: preallocated key/value buffers that attention layers write into and read back whole.

Design choices (after gpt-fast):
- one module holds the buffers of every layer, `k` and `v` of shape (num_layers, B, H_kv, S, D),
  allocated once for the longest sequence the request can reach, so decoding never reallocates and the
  shapes stay static (friendly to `torch.compile` and CUDA graphs);
- `update(layer, positions, k, v)` writes the new keys/values at their positions and returns the layer's
  full buffers; the model masks slots beyond each query's position (`arange(S) <= position`), so stale or
  never-written slots are never attended to and `reset()` is only needed for hygiene;
- two write paths, chosen from shapes and strides only (no device sync): when every row shares its
  positions (B == 1, or `positions` is an `expand`ed row, stride 0 along the batch) one `index_copy_`
  along the sequence dimension; otherwise a `scatter_` with per-row positions (ragged batches);
- buffers take the model's dtype and device, so an fp32 model on CPU caches in fp32 and a bf16 model on
  GPU in bf16.
"""

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from forge.model.transformer import Transformer


class KVCache(nn.Module):
    """Preallocated keys and values for every layer; implements `forge.model.layers.KVCacheLike`."""

    k: torch.Tensor
    v: torch.Tensor

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_kv_heads: int,
        max_seq_len: int,
        head_dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        shape = (num_layers, batch_size, num_kv_heads, max_seq_len, head_dim)  # (L, B, H_kv, S, D)
        # not persistent: a cache is scratch memory, never part of a checkpoint
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @classmethod
    def for_model(cls, model: "Transformer", batch_size: int, max_seq_len: int | None = None) -> "KVCache":
        """A cache shaped for `model` (its config, dtype and device), `max_seq_len` ≤ its context."""
        config = model.config
        context_length = config.context_length
        max_seq_len = context_length if max_seq_len is None else max_seq_len
        if not 1 <= max_seq_len <= context_length:
            raise ValueError(f"max_seq_len must be in [1, {context_length}] (the context), got {max_seq_len}")
        parameter = next(model.parameters())
        return cls(
            config.num_layers,
            batch_size,
            config.num_kv_heads,
            max_seq_len,
            config.head_dim,
            dtype=parameter.dtype,
            device=parameter.device,
        )

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_seq_len(self) -> int:
        return self.k.shape[3]

    def update(
        self, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H_kv, T, D) at `positions` (B, T) of `layer`; return its k, v (B, H_kv, S, D)."""
        k_all, v_all = self.k[layer], self.v[layer]  # views (B, H_kv, S, D)
        k, v = k.to(k_all.dtype), v.to(v_all.dtype)
        if positions.shape[0] == 1 or positions.stride(0) == 0:
            # every row shares positions[0]: one copy along the sequence dimension
            k_all.index_copy_(2, positions[0], k)
            v_all.index_copy_(2, positions[0], v)
        else:
            B, H, T, D = k.shape
            index = positions[:, None, :, None].expand(B, H, T, D)  # (B, H_kv, T, D)
            k_all.scatter_(2, index, k)
            v_all.scatter_(2, index, v)
        return k_all, v_all

    def reset(self) -> None:
        """Zero the buffers (not needed for correctness: the attention mask hides unwritten slots)."""
        self.k.zero_()
        self.v.zero_()
