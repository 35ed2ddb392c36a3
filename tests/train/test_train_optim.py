import pytest
import torch
from torch import nn

from forge.train.optim import build_optimizer, lr_multiplier


def test_schedule_warms_up_then_decays_to_the_floor() -> None:
    kw = {"warmup_steps": 10, "min_lr_ratio": 0.1}
    assert lr_multiplier(0, 0.0, **kw) == pytest.approx(0.1)
    assert lr_multiplier(9, 0.09, **kw) == pytest.approx(1.0)
    assert lr_multiplier(10, 0.0, **kw) == pytest.approx(1.0)
    assert lr_multiplier(55, 0.5, **kw) == pytest.approx(0.55)
    assert lr_multiplier(100, 1.0, **kw) == pytest.approx(0.1)
    assert lr_multiplier(500, 3.0, **kw) == pytest.approx(0.1)


def test_weight_decay_only_on_matrices() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 4, bias=True))
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), device=torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and {p.dim() for p in decay["params"]} == {2}
    assert no_decay["weight_decay"] == 0.0 and {p.dim() for p in no_decay["params"]} == {1}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
