"""Sampling: config validation, each logits processor against a hand-computed example, and `sample`."""

import math

import pytest
import torch

from forge.errors import ConfigError
from forge.infer.sampling import (
    SamplingConfig,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    process_logits,
    sample,
)

INF = float("inf")
# a known distribution, deliberately not sorted: token 2 has 0.5, token 0 0.3, token 3 0.15, token 1 0.05
PROBS = [0.3, 0.05, 0.5, 0.15]


def _logits(probs: list[float]) -> torch.Tensor:
    return torch.tensor([[math.log(p) for p in probs]])  # (1, V)


def _kept(logits: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(logits[0])).flatten().tolist())


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_new_tokens", 0), ("temperature", -0.1), ("temperature", 2.5), ("top_k", -1), ("top_p", 0.0),
     ("top_p", 1.5), ("seed", -3)],
)  # fmt: skip
def test_config_rejects_bad_values_naming_the_flag(field: str, value: float) -> None:
    flag = "--" + field.replace("_", "-")
    with pytest.raises(ConfigError, match=flag):
        SamplingConfig(**{field: value})


def test_config_defaults_and_greedy() -> None:
    assert not SamplingConfig().greedy
    assert SamplingConfig(temperature=0).greedy


def test_temperature_divides_logits() -> None:
    logits = torch.tensor([[1.0, 2.0, -3.0]])
    assert torch.equal(apply_temperature(logits, 0.5), torch.tensor([[2.0, 4.0, -6.0]]))
    assert apply_temperature(logits, 1.0) is logits
    with pytest.raises(ValueError):
        apply_temperature(logits, 0.0)


def test_top_k_keeps_the_k_largest_per_row() -> None:
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0], [9.0, 0.0, 2.0, 2.5]])
    original = logits.clone()
    out = apply_top_k(logits, 2)
    assert torch.equal(out, torch.tensor([[-INF, 5.0, -INF, 4.0], [9.0, -INF, -INF, 2.5]]))
    assert torch.equal(logits, original), "processors must not edit their input"
    assert apply_top_k(logits, 0) is logits and apply_top_k(logits, 4) is logits


def test_top_k_keeps_ties_with_the_kth() -> None:
    out = apply_top_k(torch.tensor([[3.0, 1.0, 3.0, 2.0]]), 1)
    assert _kept(out) == {0, 2}


@pytest.mark.parametrize(
    ("top_p", "expected"),
    [(0.5, {2}),  # 0.5 alone reaches 0.5
     (0.6, {2, 0}),  # 0.5 < 0.6: token 0 (0.3) crosses the threshold and is kept
     (0.85, {2, 0, 3}),  # 0.8 < 0.85: token 3 crosses
     (0.99, {2, 0, 3, 1}),
     (0.01, {2})],  # the most likely token is always kept
)  # fmt: skip
def test_top_p_keeps_the_smallest_set_reaching_p(top_p: float, expected: set[int]) -> None:
    out = apply_top_p(_logits(PROBS), top_p)
    assert _kept(out) == expected
    kept = sorted(expected)
    assert torch.allclose(out[0, kept], _logits(PROBS)[0, kept]), "kept logits are unchanged"


def test_top_p_works_row_by_row_and_after_top_k() -> None:
    logits = torch.cat([_logits(PROBS), _logits([0.25, 0.25, 0.2, 0.3])])  # (2, V)
    out = apply_top_p(logits, 0.75)
    assert torch.isfinite(out).tolist() == [[True, False, True, False], [True, True, False, True]]
    # after top_k=2 the renormalised mass is token 2: 0.625, token 0: 0.375, so 0.6 keeps only token 2
    assert _kept(apply_top_p(apply_top_k(_logits(PROBS), 2), 0.6)) == {2}
    assert apply_top_p(logits, 1.0) is logits


def test_process_logits_applies_temperature_before_top_p() -> None:
    # T = 0.5 squares the probabilities: token 2 gets 0.25 / 0.365 = 0.685 >= 0.6, so only it survives;
    # top_p before temperature would have kept tokens 2 and 0
    config = SamplingConfig(temperature=0.5, top_p=0.6)
    assert _kept(process_logits(_logits(PROBS), config)) == {2}
    assert _kept(process_logits(_logits(PROBS), SamplingConfig(temperature=1.0, top_p=0.6))) == {2, 0}


def test_sample_greedy_and_top_k_1_take_the_argmax() -> None:
    logits = torch.randn(5, 50)
    argmax = logits.argmax(-1)
    assert torch.equal(sample(logits, SamplingConfig(temperature=0)), argmax)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(sample(logits, SamplingConfig(temperature=1.5, top_k=1), generator), argmax)


def test_sample_draws_from_the_filtered_distribution() -> None:
    logits = _logits(PROBS).expand(4000, -1)  # (N, V)
    generator = torch.Generator().manual_seed(1)
    ids = sample(logits, SamplingConfig(temperature=1.0, top_p=0.6), generator)
    assert set(ids.tolist()) == {0, 2}
    assert abs((ids == 2).float().mean().item() - 0.5 / 0.8) < 0.03  # renormalised over the kept set


def test_sample_is_reproducible_with_a_generator() -> None:
    logits = torch.randn(3, 100)
    config = SamplingConfig(temperature=1.0)
    draws = [sample(logits, config, torch.Generator().manual_seed(seed)) for seed in (7, 7, 8)]
    assert torch.equal(draws[0], draws[1])
    many = [sample(logits[:1].expand(64, -1), config, torch.Generator().manual_seed(s)) for s in (7, 8)]
    assert not torch.equal(many[0], many[1])
