"""Bits per byte of a model and of the unigram baseline, against hand-computed values."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from forge.data.shards import TokenShards
from forge.train.evaluate import evaluate, unigram_bpb, unigram_counts

V = 8


class Uniform(nn.Module):
    """Predicts every token with probability 1/V."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*x.shape, V) + self.dummy


def test_uniform_model_bits_per_byte() -> None:
    token_bytes = torch.tensor([0, 1, 2, 3, 1, 1, 1, 1])  # id 0 is special: no bytes, not counted
    y = torch.tensor([[1, 2, 3, 0], [4, 0, 5, 6]])
    result = evaluate(Uniform(), [(torch.zeros_like(y), y)], token_bytes, device=torch.device("cpu"))
    assert result["tokens"] == 6 and result["bytes"] == 1 + 2 + 3 + 1 + 1 + 1
    assert result["loss"] == pytest.approx(math.log(V))
    assert result["bpb"] == pytest.approx(6 * math.log2(V) / 9)


def test_unigram_baseline(tmp_path: Path) -> None:
    train = np.array([1, 1, 1, 2], dtype="<u2")  # counts: id1 3, id2 1, others 0 → add-one smoothing
    (tmp_path / "train-00000.bin").write_bytes(train.tobytes())
    (tmp_path / "meta.json").write_text(
        json.dumps({"dtype": "uint16", "splits": {"train": {"files": ["train-00000.bin"]}}})
    )
    counts = unigram_counts(TokenShards(tmp_path, "train"), V)
    assert counts.tolist() == [0, 3, 1, 0, 0, 0, 0, 0]
    token_bytes = np.array([0, 2, 1, 1, 1, 1, 1, 1])
    y = torch.tensor([[1, 2, 0]])
    p1, p2 = 4 / 12, 2 / 12
    expected = (-math.log2(p1) - math.log2(p2)) / 3
    assert unigram_bpb(counts, [(y, y)], token_bytes) == pytest.approx(expected)
