"""bf16 autocast, and its float32-compute route for CPUs without bf16 instructions."""

import pytest
import torch
import torch.nn.functional as F

from forge.model.config import ModelConfig
from forge.model.transformer import Transformer
from forge.train import precision
from forge.train.precision import autocast, bf16_linear_float_compute

CPU = torch.device("cpu")


def _operands() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 48, generator=generator, requires_grad=True)
    weight = torch.randn(40, 48, generator=generator, requires_grad=True)
    return x, weight


def test_route_multiplies_the_bf16_rounded_operands_exactly() -> None:
    x, weight = _operands()
    y = bf16_linear_float_compute(x, weight)
    assert y.dtype == torch.bfloat16
    x16, w16 = x.detach().bfloat16().double(), weight.detach().bfloat16().double()
    exact = (x16 @ w16.T).bfloat16()  # float64 products and sums, rounded once to bf16 like the route
    mismatch = (y != exact).float().mean().item()
    assert mismatch < 0.02  # float32 vs float64 sums may round a rare value to the neighbouring bf16

    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).bfloat16()
    y.backward(grad)
    assert x.grad is not None and weight.grad is not None
    assert x.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32  # the inputs' dtypes
    g = grad.double()
    torch.testing.assert_close(x.grad.double(), g @ w16, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        weight.grad.double(), g.reshape(-1, 40).T @ x16.reshape(-1, 48), rtol=1e-5, atol=1e-4
    )


def test_route_agrees_with_native_bf16_autocast() -> None:
    x, weight = _operands()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        native = F.linear(x, weight)
    ours = bf16_linear_float_compute(x, weight)
    # both are the bf16-rounded product; they may differ by the rounding of the float32 sum
    torch.testing.assert_close(ours.float(), native.float(), rtol=1.6e-2, atol=1e-2)


@pytest.mark.parametrize("native", [False, True])
def test_autocast_uses_the_route_only_without_bf16_instructions(
    native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    x, weight = _operands()
    layer = torch.nn.Linear(48, 40, bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    with autocast(CPU, torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = F.linear(x, weight)
    routed = bf16_linear_float_compute(x, weight)
    assert torch.equal(y, plain if native else routed)
    with autocast(CPU, None):  # off: float32 throughout
        assert layer(x).dtype == torch.float32


def test_bf16_training_with_the_route_learns_like_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    config = ModelConfig(vocab_size=64, context_length=16, dim=32, num_layers=2, num_heads=4, num_kv_heads=2)
    torch.manual_seed(0)
    batch = torch.randint(0, 64, (4, 17))
    x, y = batch[:, :-1], batch[:, 1:]
    losses = {}
    for dtype in (None, torch.bfloat16):
        torch.manual_seed(0)
        model = Transformer(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        trace = []
        for _ in range(30):
            with autocast(CPU, dtype):
                loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            trace.append(loss.item())
        losses[dtype] = trace
    assert losses[torch.bfloat16][-1] < 0.5 * losses[torch.bfloat16][0]  # it overfits the batch
    assert abs(losses[torch.bfloat16][-1] - losses[None][-1]) < 0.1 * losses[None][0]
