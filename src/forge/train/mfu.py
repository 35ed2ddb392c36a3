"""Model FLOPs utilisation against a peak measured on this machine, not a datasheet number.

Design choices:
- the peak is the best rate of a large square matmul in the training dtype on the training device and
  threads (`measure_peak_flops`, also `forge bench-peak`), so MFU is honest on a laptop CPU, a server
  CPU or a GPU alike: 100% would mean every training FLOP ran at the speed of the best-case matmul;
- bf16 on a CPU without bf16 instructions is measured the way forge's training computes it there
  (`forge.train.precision`: bf16 operands multiplied in float32), since that is the rate training can reach;
- the model's FLOPs per token are the PaLM / nanoGPT count (`forge.model.config.flops_per_token`).
"""

import time

import torch

from forge.train.precision import bf16_linear_float_compute, cpu_has_native_bf16


def measure_peak_flops(
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    *,
    size: int = 0,
    seconds: float = 1.0,
) -> float:
    """FLOP/s of the best of repeated `size` x `size` matmuls (2·size³ FLOPs each) for about `seconds`.

    `size` 0 grows the matrices from 256 while one product takes under 50 ms, up to 2048 on CPU and 8192
    on GPU: big enough to reach the peak, and never a minute-long probe where a dtype is emulated.
    """
    device = torch.device(device)
    float_compute = dtype == torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bf16()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    generator = torch.Generator(device=device).manual_seed(0)  # leaves the global RNG (training's) alone

    def operands(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = (torch.randn(n, n, device=device, generator=generator) for _ in range(2))
        return a.to(dtype), b.to(dtype)

    def once(a: torch.Tensor, b: torch.Tensor) -> float:
        start = time.perf_counter()
        if float_compute:
            bf16_linear_float_compute(a, b)  # a bᵀ: the same FLOPs as a b
        else:
            torch.mm(a, b)
        sync()
        return time.perf_counter() - start

    if not size:
        size, largest = 256, 8192 if device.type == "cuda" else 2048
        while size < largest:
            a, b = operands(size)
            once(a, b)  # warm-up
            if once(a, b) > 0.05:
                break
            size *= 2
    a, b = operands(size)
    once(a, b)  # warm-up: kernels chosen, memory touched
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        best = min(best, once(a, b))
    return 2 * size**3 / best


def model_flops_utilization(flops_per_token: float, tokens_per_s: float, peak_flops: float) -> float:
    """Achieved model FLOP/s over the peak, to 4 significant digits.

    Significant digits, not decimal places: a tiny model on a large GPU runs at a small fraction of a
    percent of its peak, which 4 decimal places would report as 0.
    """
    return float(f"{flops_per_token * tokens_per_s / peak_flops:.4g}")
