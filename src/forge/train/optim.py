"""Optimizer and learning-rate schedule.

AdamW with two parameter groups (nanoGPT's rule): every parameter with two or more dimensions (matmul
weights, embeddings) decays, vectors (norm gains) do not. `lr_scales` gives some parameters, picked by
name suffix, a multiple of the learning rate (LoRA+ trains `lora_B` faster than `lora_A`); a group keeps
its multiple as `lr_scale`, so the schedule and a resumed run apply it too. The fused kernel is used where
the device has one, foreach otherwise. The schedule is a pure function of training progress — linear
warmup, then cosine decay to `min_lr_ratio × lr` — so resuming needs only the step, and a wall-clock
budget can drive it.
"""

import math
from collections.abc import Mapping

import torch
from torch import nn


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    device: torch.device,
    lr_scales: Mapping[str, float] | None = None,
) -> torch.optim.AdamW:
    """AdamW over the model's trainable parameters, decay only on tensors with ≥ 2 dims.

    `lr_scales` maps a parameter-name suffix to a multiple of `lr` for the parameters whose name ends so.
    """
    scales = dict(lr_scales or {})
    grouped: dict[tuple[bool, float], list[nn.Parameter]] = {(True, 1.0): [], (False, 1.0): []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale = next((s for suffix, s in scales.items() if name.endswith(suffix)), 1.0)
        grouped.setdefault((param.dim() >= 2, scale), []).append(param)
    groups = [
        {
            "params": params,
            "weight_decay": weight_decay if decays else 0.0,
            "lr": lr * scale,
            "lr_scale": scale,
        }  # fmt: skip
        for (decays, scale), params in grouped.items()
        if params or scale == 1.0
    ]
    fused = device.type == "cuda"
    return torch.optim.AdamW(
        groups, lr=lr, betas=betas, eps=1e-8, fused=fused, foreach=None if fused else True
    )


def lr_multiplier(step: int, progress: float, *, warmup_steps: int, min_lr_ratio: float) -> float:
    """Learning-rate factor at `step` with `progress` ∈ [0, 1] of the run done.

    Linear warmup over the first `warmup_steps` steps, then cosine from 1 to `min_lr_ratio` as progress
    goes from 0 to 1.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(max(progress, 0.0), 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * cosine


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group, times the group's `lr_scale`."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
