"""The KV cache: preallocated key/value buffers that attention layers write into and read back whole.

Design choices (after gpt-fast):
- one pair of buffers per layer, `keys[layer]` and `values[layer]` of shape (B, H_kv, S, D), allocated
  once for the longest sequence the request can reach, so decoding never reallocates and the shapes stay
  static (friendly to `torch.compile` and CUDA graphs). Separate tensors, not one (L, B, ...) tensor:
  a compiled step that writes into a slice of a larger input has to rebuild the whole input, which was
  measured to copy the entire cache once per layer per token (180 ms a step instead of a few);
- `update(layer, positions, k, v)` writes the new keys/values at their positions and returns the layer's
  full buffers; the model masks slots beyond each query's position (`arange(S) <= position`), so stale or
  never-written slots are never attended to and `reset()` is only needed for hygiene;
- two write paths, chosen from shapes and strides only (no device sync): when every row shares its
  positions (B == 1, or `positions` is an `expand`ed row, stride 0 along the batch) one `index_copy_`
  along the sequence dimension; otherwise an indexed assignment with per-row positions (ragged batches);
  both compile to in-place writes;
- buffers take the model's dtype and device, so an fp32 model on CPU caches in fp32 and a bf16 model on
  GPU in bf16; a cache is scratch memory, never part of a checkpoint.
"""

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from forge.model.transformer import Transformer


class KVCache:
    """Preallocated keys and values for every layer; implements `forge.model.layers.KVCacheLike`."""

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
        shape = (batch_size, num_kv_heads, max_seq_len, head_dim)  # (B, H_kv, S, D) per layer
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

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
        return self.keys[0].shape[0]

    @property
    def max_seq_len(self) -> int:
        return self.keys[0].shape[2]

    def update(
        self, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H_kv, T, D) at `positions` (B, T) of `layer`; return its k, v (B, H_kv, S, D)."""
        k_all, v_all = self.keys[layer], self.values[layer]
        k, v = k.to(k_all.dtype), v.to(v_all.dtype)
        if positions.shape[0] == 1 or positions.stride(0) == 0:
            # every row shares positions[0]: one copy along the sequence dimension
            k_all.index_copy_(2, positions[0], k)
            v_all.index_copy_(2, positions[0], v)
        else:
            rows = torch.arange(k.shape[0], device=k.device)[:, None]  # (B, 1), broadcast with (B, T)
            k_all[rows, :, positions] = k.transpose(1, 2)  # indexed view is (B, T, H_kv, D)
            v_all[rows, :, positions] = v.transpose(1, 2)
        return k_all, v_all

    def view(self, rows: slice, length: int) -> "KVCache":
        """A cache over the rows `rows` and the first `length` slots of this one, sharing its memory:
        writes through the view land here. The server prefills a request into its own row, and decodes
        its running rows, through such views, so a step reads only the slots in use."""
        view = object.__new__(KVCache)
        view.keys = [k[rows, :, :length] for k in self.keys]
        view.values = [v[rows, :, :length] for v in self.values]
        return view

    def copy_row(self, source: int, targets: list[int], length: int) -> None:
        """Copy the first `length` slots of row `source` into each row of `targets` (a shared prompt)."""
        for buffers in (self.keys, self.values):
            for buffer in buffers:
                buffer[targets, :, :length] = buffer[source, :, :length]

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep the rows `index` (B',) of every buffer, in that order (repeats copy a row: `n` samples of
        one prompt, beams that share a parent)."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]

    def reset(self) -> None:
        """Zero the buffers (not needed for correctness: the attention mask hides unwritten slots)."""
        for buffer in (*self.keys, *self.values):
            buffer.zero_()
