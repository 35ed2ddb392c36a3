"""Optimizer and learning-rate schedule.

AdamW with two parameter groups (nanoGPT's rule): every parameter with two or more dimensions (matmul
weights, embeddings) decays, vectors (norm gains) do not. The fused kernel is used where the device has
one, foreach otherwise. The schedule is a pure function of training progress — linear warmup, then cosine
decay to `min_lr_ratio × lr` — so resuming needs only the step, and a wall-clock budget can drive it.
"""

import math

import torch
from torch import nn


def build_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float], device: torch.device
) -> torch.optim.AdamW:
    """AdamW over the model's trainable parameters, decay only on tensors with ≥ 2 dims."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
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
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
