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


def test_lr_scales_give_named_parameters_a_multiple_that_the_schedule_keeps() -> None:
    from forge.train.optim import set_lr

    model = nn.ModuleDict({"lora_A": nn.Linear(4, 2, bias=False), "lora_B": nn.Linear(2, 4, bias=True)})
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), device=torch.device("cpu"),
                          lr_scales={"lora_B.weight": 16.0})  # fmt: skip
    by_scale = {g["lr_scale"]: g for g in opt.param_groups if g["params"]}
    assert len(by_scale[16.0]["params"]) == 1 and by_scale[16.0]["params"][0] is model["lora_B"].weight
    assert by_scale[16.0]["lr"] == pytest.approx(1.6e-2) and by_scale[16.0]["weight_decay"] == 0.1
    set_lr(opt, 5e-4)
    assert [g["lr"] for g in opt.param_groups if g["params"]] == pytest.approx([5e-4, 5e-4, 8e-3])
    before = model["lora_B"].weight.detach().clone(), model["lora_A"].weight.detach().clone()
    model["lora_B"](model["lora_A"](torch.ones(3, 4))).sum().backward()
    opt.step()  # Adam's first step moves every weight by about its lr: 16 times further for lora_B
    moved_b = (model["lora_B"].weight - before[0]).abs().mean().item()
    moved_a = (model["lora_A"].weight - before[1]).abs().mean().item()
    assert moved_b / moved_a == pytest.approx(16.0, rel=0.05)
