"""Mixed precision for training and evaluation: `autocast(device, dtype)`, with a fast bf16 route on CPUs
that have no bf16 instructions.

Design choices:
- on GPU, and on CPUs with bf16 matrix instructions (AVX512-BF16, AMX), this is `torch.autocast`, nothing
  more;
- on a CPU without them, oneDNN emulates a bf16 matmul at about 1 GFLOP/s where float32 runs at 60-170
  (measured on a 2-core AVX2 machine), which makes bf16 training there 30x slower than float32. So under
  bf16 autocast on such a CPU, every linear layer takes its input and weight rounded to bf16, as autocast
  would, and multiplies them in float32. A product of two bf16 numbers is exact in float32 and a bf16
  GEMM accumulates in float32 anyway, so the result equals the native bf16 GEMM up to the order of the
  additions; the output is rounded to bf16, and the backward pass keeps the bf16 operands (not float32
  copies) and computes its two GEMMs the same way. The one difference: the weight gradient is not rounded
  to bf16 before it reaches the float32 weight, so it is slightly more exact than native autocast's;
- the route is a `TorchFunctionMode` over `F.linear`, applied from outside, so the model stays
  architecture only; attention, norms and the loss run under plain autocast.
"""

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (oneDNN's own check for AVX512-BF16 / AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class _Bf16LinearFloatCompute(torch.autograd.Function):
    """y = x Wᵀ with x and W rounded to bf16, multiplied in float32, y rounded to bf16."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            x16, w16 = x.to(torch.bfloat16), weight.to(torch.bfloat16)
            ctx.save_for_backward(x16, w16)
            ctx.dtypes = (x.dtype, weight.dtype)
            return F.linear(x16.float(), w16.float()).to(torch.bfloat16)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x16, w16 = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        with torch.autocast("cpu", enabled=False):
            g = grad.float()  # (..., out)
            grad_x = (g @ w16.float()).to(x_dtype) if ctx.needs_input_grad[0] else None  # (..., in)
            grad_w = None
            if ctx.needs_input_grad[1]:
                flat_g, flat_x = g.reshape(-1, g.shape[-1]), x16.float().reshape(-1, x16.shape[-1])
                grad_w = (flat_g.t() @ flat_x).to(w_dtype)  # (out, in)
        return grad_x, grad_w


def bf16_linear_float_compute(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`F.linear(x, weight)` (no bias) as bf16 autocast computes it, with float32 multiplications."""
    return _Bf16LinearFloatCompute.apply(x, weight)


class _Bf16LinearMode(TorchFunctionMode):
    """Routes bias-free `F.linear` calls on CPU tensors through `bf16_linear_float_compute`."""

    def __torch_function__(
        self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight, *rest = args
            bias = rest[0] if rest else kwargs.get("bias")
            if bias is None and x.device.type == "cpu":
                return bf16_linear_float_compute(x, weight)
        return func(*args, **kwargs)


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Mixed precision in `dtype` (None: off, float32 throughout); see the module docstring for CPUs
    without bf16 instructions."""
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        if dtype == torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bf16():
            with _Bf16LinearMode():
                yield
        else:
            yield
