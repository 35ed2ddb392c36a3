"""Evaluation in bits per byte, and the unigram baseline measured on the same tokens.

Bits per byte = total cross-entropy in bits ÷ total UTF-8 bytes of the predicted tokens. Unlike loss per
token it does not depend on the tokenizer, so models with different vocabularies compare directly.
Special tokens (document separators) have no bytes; as in nanochat they are left out of both sums.
"""

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from forge.data.shards import TokenShards
from forge.train.precision import autocast


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    token_bytes: torch.Tensor,
    *,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Mean loss (nats/token) and bits per byte of `model` over `batches`, counting tokens that have bytes."""
    was_training = model.training
    model.eval()
    token_bytes = token_bytes.to(device)
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    total_tokens = torch.zeros((), dtype=torch.int64, device=device)
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast(device, autocast_dtype):
            logits = model(x)
        nats = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")  # (B*T,)
        nbytes = token_bytes[y.flatten()]
        counted = nbytes > 0
        total_nats += nats[counted].double().sum()
        total_bytes += nbytes.sum()
        total_tokens += counted.sum()
    model.train(was_training)
    tokens, nbytes_total = int(total_tokens), int(total_bytes)
    if tokens == 0:
        return {"loss": math.nan, "bpb": math.nan, "tokens": 0, "bytes": 0}
    nats_total = float(total_nats)
    return {
        "loss": nats_total / tokens,
        "bpb": nats_total / (math.log(2) * nbytes_total),
        "tokens": tokens,
        "bytes": nbytes_total,
    }


def unigram_counts(shards: TokenShards, vocab_size: int, chunk: int = 1 << 24) -> np.ndarray:
    """Token frequencies over a split, read in chunks so memory stays bounded."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for shard in shards.arrays:
        for start in range(0, len(shard), chunk):
            counts += np.bincount(shard[start : start + chunk], minlength=vocab_size)[:vocab_size]
    return counts


def unigram_bpb(
    counts: np.ndarray, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], token_bytes: np.ndarray
) -> float:
    """Bits per byte of a unigram model (train frequencies, add-one smoothing) on the targets of `batches`."""
    probs = (counts + 1.0) / (counts.sum() + len(counts))
    bits = -np.log2(probs)
    total_bits, total_bytes = 0.0, 0
    for _, y in batches:
        targets = y.flatten().numpy()
        nbytes = token_bytes[targets]
        counted = nbytes > 0
        total_bits += float(bits[targets[counted]].sum())
        total_bytes += int(nbytes.sum())
    return total_bits / total_bytes if total_bytes else math.nan
