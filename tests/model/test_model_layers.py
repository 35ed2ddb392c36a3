"""Layers against references: RMSNorm and attention against explicit formulas, RoPE against its algebra."""

import math

import pytest
import torch
import torch.nn.functional as F

from forge.model.config import ModelConfig
from forge.model.layers import MLP, Attention, RMSNorm, apply_rope, precompute_rope


def test_rmsnorm_matches_formula_and_keeps_dtype() -> None:
    norm = RMSNorm(8, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(8))
    x = torch.randn(2, 3, 8)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected, atol=1e-6, rtol=1e-5)
    assert norm.to(torch.bfloat16)(x.bfloat16()).dtype == torch.bfloat16


def test_rope_rotates_pairs_and_scores_depend_on_relative_position() -> None:
    head_dim = 8
    cos, sin = precompute_rope(head_dim, 32, theta=10000.0)
    assert cos.shape == sin.shape == (32, head_dim)
    # position 0 is the identity; rotate_half pairs dimension i with i + head_dim / 2
    x = torch.randn(1, 1, 1, head_dim)
    torch.testing.assert_close(apply_rope(x, cos[:1][None], sin[:1][None]), x)
    angle = 5 * 1.0 / 10000 ** (2 / head_dim)  # position 5, frequency pair 1
    rotated = apply_rope(x, cos[5:6][None], sin[5:6][None])[0, 0, 0]
    x1, x2 = x[0, 0, 0, 1], x[0, 0, 0, 1 + head_dim // 2]
    torch.testing.assert_close(rotated[1], x1 * math.cos(angle) - x2 * math.sin(angle))
    torch.testing.assert_close(rotated[1 + head_dim // 2], x2 * math.cos(angle) + x1 * math.sin(angle))
    # q·k after rotation depends only on the distance between the two positions
    q, k = torch.randn(1, 1, 1, head_dim), torch.randn(1, 1, 1, head_dim)

    def score(i: int, j: int) -> torch.Tensor:
        qi = apply_rope(q, cos[i : i + 1][None], sin[i : i + 1][None])
        kj = apply_rope(k, cos[j : j + 1][None], sin[j : j + 1][None])
        return (qi * kj).sum()

    torch.testing.assert_close(score(7, 3), score(20, 16), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(score(7, 3), score(7, 4))


def naive_attention(
    attention: Attention, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """softmax(Q Kᵀ / √d + causal mask) V, k/v heads repeated for GQA, all written out."""
    B, T, C = x.shape
    H, H_kv, D = attention.num_heads, attention.num_kv_heads, attention.head_dim
    q = (x @ attention.q_proj.weight.T).view(B, T, H, D).transpose(1, 2)
    k = (x @ attention.k_proj.weight.T).view(B, T, H_kv, D).transpose(1, 2)
    v = (x @ attention.v_proj.weight.T).view(B, T, H_kv, D).transpose(1, 2)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k = torch.stack([k[:, h // (H // H_kv)] for h in range(H)], dim=1)
    v = torch.stack([v[:, h // (H // H_kv)] for h in range(H)], dim=1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    weights = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    y = (weights @ v).transpose(1, 2).reshape(B, T, H * D)
    return y @ attention.o_proj.weight.T


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
def test_attention_matches_naive_reference(num_kv_heads: int) -> None:
    config = ModelConfig(dim=32, num_heads=4, num_kv_heads=num_kv_heads, context_length=16)
    attention = Attention(config)
    assert attention.k_proj.weight.shape == (num_kv_heads * 8, 32)
    x = torch.randn(2, 10, 32)
    cos, sin = precompute_rope(config.head_dim, config.context_length)
    cos, sin = cos[:10][None], sin[:10][None]
    torch.testing.assert_close(
        attention(x, cos, sin), naive_attention(attention, x, cos, sin), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
def test_one_query_attention_matches_the_masked_kernel(num_kv_heads: int) -> None:
    config = ModelConfig(dim=32, num_heads=4, num_kv_heads=num_kv_heads)
    attention = Attention(config)
    q = torch.randn(3, 4, 1, 8)  # (B, H, 1, D): one decode step per row
    k, v = torch.randn(3, num_kv_heads, 12, 8), torch.randn(3, num_kv_heads, 12, 8)  # (B, H_kv, S, D)
    mask = torch.arange(12)[None, None, None, :] <= torch.tensor([2, 7, 11])[:, None, None, None]  # ragged
    groups = 4 // num_kv_heads
    expected = F.scaled_dot_product_attention(
        q, k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1), attn_mask=mask
    )
    torch.testing.assert_close(attention._attend(q, k, v, mask), expected, atol=1e-6, rtol=1e-5)


def test_attention_is_causal() -> None:
    config = ModelConfig(dim=32, num_heads=4, num_kv_heads=2)
    attention = Attention(config)
    cos, sin = precompute_rope(config.head_dim, 8)
    x = torch.randn(1, 8, 32)
    changed = x.clone()
    changed[:, 5:] = torch.randn(1, 3, 32)
    out, out_changed = attention(x, cos[None], sin[None]), attention(changed, cos[None], sin[None])
    torch.testing.assert_close(out[:, :5], out_changed[:, :5])
    assert not torch.allclose(out[:, 5:], out_changed[:, 5:])


def test_mlp_is_swiglu() -> None:
    config = ModelConfig(dim=32, intermediate_size=48)
    mlp = MLP(config)
    x = torch.randn(3, 32)
    expected = (F.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)) @ mlp.down_proj.weight.T
    torch.testing.assert_close(mlp(x), expected)
