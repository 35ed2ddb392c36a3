"""Sampling: config validation, each logits processor against a hand-computed example, and `sample`."""

import dataclasses
import math

import pytest
import torch

from forge.config import build, field_docs
from forge.errors import ConfigError
from forge.infer.sampling import (
    SamplingConfig,
    apply_logit_bias,
    apply_min_p,
    apply_presence_frequency,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    count_tokens,
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
     ("top_p", 1.5), ("seed", -3), ("min_p", -0.1), ("min_p", 1.5), ("repetition_penalty", 0.0),
     ("repetition_penalty", -1.2), ("presence_penalty", 2.5), ("frequency_penalty", -2.1),
     ("min_new_tokens", -1), ("min_new_tokens", 129), ("n", 0), ("num_beams", 0)],
)  # fmt: skip
def test_config_rejects_bad_values_naming_the_flag(field: str, value: float) -> None:
    flag = "--" + field.replace("_", "-")
    with pytest.raises(ConfigError, match=flag):
        SamplingConfig(**{field: value})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"stop": ("a", "b", "c", "d", "e")}, "--stop"),
     ({"stop": ("",)}, "--stop"),
     ({"num_beams": 4}, "--num-beams 4 .* requires --temperature 0"),  # default temperature is 0.8
     ({"num_beams": 2, "temperature": 0, "n": 3}, "--n"),
     ({"num_beams": 2, "temperature": 0, "length_penalty": 3.0}, "--length-penalty"),
     ({"length_penalty": 0.5}, "--length-penalty"),  # only for beam search
     ({"early_stopping": True}, "--early-stopping"),
     ({"max_new_tokens": 5, "min_new_tokens": 6}, "--min-new-tokens")],
)  # fmt: skip
def test_config_rejects_bad_combinations_naming_the_flag(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SamplingConfig(**kwargs)  # type: ignore[arg-type]


def test_config_accepts_valid_new_settings_and_documents_every_field() -> None:
    config = SamplingConfig(
        min_p=0.1, repetition_penalty=1.2, presence_penalty=-2, frequency_penalty=2, min_new_tokens=128,
        stop=("\n\n", "###"), n=2, num_beams=3, temperature=0, length_penalty=0.6, early_stopping=True,
        truncate_prompt=True,
    )  # fmt: skip
    assert config.num_beams == 3 and config.stop == ("\n\n", "###")
    fields = set(SamplingConfig.__dataclass_fields__)
    assert set(field_docs(SamplingConfig)) == fields, "every field needs a docstring (it is its --help)"


def test_logit_bias_parses_from_the_command_line_form() -> None:
    config = build(SamplingConfig, {"logit_bias": "50:-100,7:2.5"})  # as `--logit-bias 50:-100,7:2.5`
    assert config.logit_bias == ("50:-100", "7:2.5")
    assert config.logit_bias_map == {50: -100.0, 7: 2.5}
    assert SamplingConfig().logit_bias_map == {}
    with pytest.raises(ConfigError, match="--logit-bias gives token 5 twice"):
        SamplingConfig(logit_bias=("5:1", "5:2"))


@pytest.mark.parametrize("entry", ["50", "x:1", "5:abc", "5:100.5", "-1:3", "5:nan", ":2", "5:-inf"])
def test_logit_bias_rejects_bad_entries_naming_the_flag(entry: str) -> None:
    with pytest.raises(ConfigError, match="--logit-bias"):
        SamplingConfig(logit_bias=(entry,))


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


# ---------------------------------------------------------------------------------------------------------
# the new processors, each against a hand-computed example


def test_logit_bias_adds_a_shared_or_per_row_bias() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, 3.0, 3.0]])
    shared = apply_logit_bias(logits, torch.tensor([-100.0, 0.0, 2.5]))  # (V,)
    assert torch.equal(shared, torch.tensor([[-100.0, 1.0, 4.5], [-97.0, 3.0, 5.5]]))
    per_row = apply_logit_bias(logits, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]))  # (B, V)
    assert torch.equal(per_row, torch.tensor([[1.0, 1.0, 2.0], [3.0, 3.0, 2.0]]))


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0, 0.0], [2.0, -1.0, 0.5, -3.0, 0.0]])
    seen = torch.tensor([[True, True, False, False, True], [True, True, True, True, True]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert torch.equal(out[0], torch.tensor([1.0, -2.0, 0.5, -3.0, 0.0]))  # unseen 0.5, -3 unchanged
    assert torch.equal(out[1], torch.tensor([1.0, -2.0, 0.25, -6.0, 0.0]))
    per_row = apply_repetition_penalty(logits, seen, torch.tensor([4.0, 1.0]))  # row 1: off
    assert torch.equal(per_row, torch.tensor([[0.5, -4.0, 0.5, -3.0, 0.0], [2.0, -1.0, 0.5, -3.0, 0.0]]))
    assert apply_repetition_penalty(logits, seen, 1.0) is logits


def test_presence_and_frequency_penalties_follow_the_counts() -> None:
    logits = torch.ones(2, 4)
    counts = torch.tensor([[0, 1, 3, 0], [2, 0, 0, 1]], dtype=torch.int32)
    out = apply_presence_frequency(logits, counts, 0.5, 0.25)
    # logit - 0.5 * (count > 0) - 0.25 * count: count 1 → 1 - 0.5 - 0.25, count 3 → 1 - 0.5 - 0.75
    assert torch.equal(out, torch.tensor([[1.0, 0.25, -0.25, 1.0], [0.0, 1.0, 1.0, 0.25]]))
    per_row = apply_presence_frequency(logits, counts, torch.tensor([0.5, 0.0]), torch.tensor([0.25, 1.0]))
    assert torch.equal(per_row, torch.tensor([[1.0, 0.25, -0.25, 1.0], [-1.0, 1.0, 1.0, 0.0]]))
    negative = apply_presence_frequency(logits[:1], counts[:1], -1.0, 0.0)  # negative encourages repeats
    assert torch.equal(negative, torch.tensor([[1.0, 2.0, 2.0, 1.0]]))
    assert apply_presence_frequency(logits, counts, 0.0, 0.0) is logits


def test_temperature_per_row() -> None:
    logits = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    assert torch.equal(
        apply_temperature(logits, torch.tensor([0.5, 2.0])), torch.tensor([[2.0, 4.0], [0.5, 1.0]])
    )
    with pytest.raises(ValueError):
        apply_temperature(logits, torch.tensor([1.0, 0.0]))


def test_top_k_per_row_with_0_meaning_off() -> None:
    logits = torch.tensor(
        [[1.0, 5.0, 3.0, 4.0], [9.0, 0.0, 2.0, 2.5], [1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 3.0, 1.0]]
    )
    out = apply_top_k(logits, torch.tensor([2, 0, 1, 2]))
    expected = [[-INF, 5.0, -INF, 4.0], [9.0, 0.0, 2.0, 2.5], [-INF, -INF, -INF, 4.0], [4.0, 3.0, 3.0, -INF]]
    assert torch.equal(out, torch.tensor(expected))  # last row: ties with the k-th are kept
    assert torch.equal(apply_top_k(logits[:1], torch.tensor([7])), logits[:1]), "k >= V keeps everything"


def test_top_p_per_row_with_1_meaning_off() -> None:
    logits = torch.cat([_logits(PROBS), _logits(PROBS), _logits(PROBS)])  # (3, V)
    out = apply_top_p(logits, torch.tensor([0.6, 1.0, 0.85]))
    assert torch.isfinite(out).tolist() == [[True, False, True, False], [True] * 4, [True, False, True, True]]


@pytest.mark.parametrize(
    ("min_p", "expected"),
    [(0.5, {2, 0}),  # threshold 0.5 * 0.5 = 0.25: keeps 0.5 and 0.3
     (0.2, {2, 0, 3}),  # threshold 0.1: keeps 0.15 too, not 0.05
     (0.05, {2, 0, 3, 1}),  # threshold 0.025
     (1.0, {2})],  # only the most likely token
)  # fmt: skip
def test_min_p_keeps_tokens_above_a_fraction_of_the_top_probability(min_p: float, expected: set[int]) -> None:
    out = apply_min_p(_logits(PROBS), min_p)
    assert _kept(out) == expected
    kept = sorted(expected)
    assert torch.allclose(out[0, kept], _logits(PROBS)[0, kept]), "kept logits are unchanged"


def test_min_p_per_row_with_0_meaning_off() -> None:
    logits = torch.cat([_logits(PROBS), _logits(PROBS)])  # (2, V)
    out = apply_min_p(logits, torch.tensor([0.5, 0.0]))
    assert torch.isfinite(out).tolist() == [[True, False, True, False], [True] * 4]
    assert apply_min_p(logits, 0.0) is logits


def test_count_tokens_counts_each_id_and_skips_padding() -> None:
    counts = count_tokens(torch.tensor([[3, 1, 3, -1], [0, 0, 0, 4]]), vocab_size=5)
    assert counts.tolist() == [[0, 1, 0, 2, 0], [3, 0, 0, 0, 1]]


def _on(processor: str, logits: torch.Tensor) -> torch.Tensor:
    B, V = logits.shape
    seen, counts = torch.ones(B, V, dtype=torch.bool), torch.full((B, V), 2)
    calls = {
        "bias": lambda: apply_logit_bias(logits, torch.ones(V)),
        "repetition": lambda: apply_repetition_penalty(logits, seen, torch.full((B,), 1.5)),
        "presence_frequency": lambda: apply_presence_frequency(logits, counts, 0.5, torch.full((B,), 0.5)),
        "temperature": lambda: apply_temperature(logits, torch.full((B,), 0.7)),
        "top_k": lambda: apply_top_k(logits, torch.full((B,), 3)),
        "top_k_int": lambda: apply_top_k(logits, 3),
        "top_p": lambda: apply_top_p(logits, torch.full((B,), 0.5)),
        "min_p": lambda: apply_min_p(logits, torch.full((B,), 0.3)),
    }
    return calls[processor]()


@pytest.mark.parametrize(
    "processor",
    ["bias", "repetition", "presence_frequency", "temperature", "top_k", "top_k_int", "top_p", "min_p"],
)
def test_processors_return_a_new_tensor_and_leave_their_input_alone(processor: str) -> None:
    logits = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    original = logits.clone()
    out = _on(processor, logits)
    assert out is not logits and not torch.equal(out, original)
    assert torch.equal(logits, original), "processors must not edit their input"


def test_process_logits_applies_bias_then_penalties_then_temperature() -> None:
    logits = torch.tensor([[1.0, 3.0, 0.0, 2.0]])
    seen = torch.tensor([[True, False, False, False]])
    counts = torch.tensor([[1, 0, 0, 0]])
    config = SamplingConfig(
        logit_bias=("0:-2",), repetition_penalty=2.0, presence_penalty=0.5, temperature=0.5
    )
    # token 0: bias 1 - 2 = -1, repetition (negative) -1 * 2 = -2, presence -2 - 0.5 = -2.5, T: -2.5 / 0.5
    out = process_logits(logits, config, seen=seen, counts=counts)
    assert torch.equal(out, torch.tensor([[-5.0, 6.0, 0.0, 4.0]]))
    # greedy: the same steps 1-3, no temperature
    greedy = process_logits(logits, dataclasses.replace(config, temperature=0.0), seen=seen, counts=counts)
    assert torch.equal(greedy, torch.tensor([[-2.5, 3.0, 0.0, 2.0]]))


def test_process_logits_applies_min_p_after_top_p() -> None:
    # top_p 0.82 keeps 0.5, 0.3, 0.15 (0.8 before it < 0.82); min_p 0.2 (threshold 0.1) then keeps them all.
    # The other way round, min_p would drop 0.05 first and top_p over the renormalised 0.526, 0.316, 0.158
    # would stop at 0.842 >= 0.82, dropping token 3.
    config = SamplingConfig(temperature=1.0, top_p=0.82, min_p=0.2)
    assert _kept(process_logits(_logits(PROBS), config)) == {2, 0, 3}
    assert _kept(apply_top_p(apply_min_p(_logits(PROBS), 0.2), 0.82)) == {2, 0}


def test_process_logits_needs_the_statistics_its_penalties_use() -> None:
    logits = torch.zeros(1, 4)
    with pytest.raises(ValueError, match="seen"):
        process_logits(logits, SamplingConfig(repetition_penalty=1.2))
    with pytest.raises(ValueError, match="counts"):
        process_logits(logits, SamplingConfig(frequency_penalty=0.5))
    with pytest.raises(ConfigError, match="--logit-bias"):
        process_logits(logits, SamplingConfig(logit_bias=("4:1",)))  # id 4 is outside a vocabulary of 4


def test_greedy_applies_penalties_and_bias_before_the_argmax() -> None:
    logits = torch.tensor([[2.0, 1.5, 0.0]])
    assert sample(logits, SamplingConfig(temperature=0)).item() == 0
    seen = torch.tensor([[True, False, False]])
    penalised = SamplingConfig(temperature=0, repetition_penalty=2.0)  # 2.0 → 1.0 < 1.5
    assert sample(logits, penalised, seen=seen).item() == 1
    counts = torch.tensor([[1, 0, 0]])
    present = SamplingConfig(temperature=0, presence_penalty=1.0)  # 2.0 → 1.0 < 1.5
    assert sample(logits, present, counts=counts).item() == 1
    assert sample(logits, SamplingConfig(temperature=0, logit_bias=("2:5",))).item() == 2
    assert sample(logits, SamplingConfig(temperature=0, logit_bias=("0:-100",))).item() == 1


def test_sample_never_draws_a_banned_or_min_p_cut_token() -> None:
    logits = _logits(PROBS).expand(2000, -1)  # (N, V)
    config = SamplingConfig(temperature=1.0, min_p=0.2, logit_bias=("2:-100",))
    ids = sample(logits, config, torch.Generator().manual_seed(2))
    # token 2 banned, token 0 (0.3) is the most likely: min_p 0.2 keeps >= 0.06, so 0.15 but not 0.05
    assert set(ids.tolist()) == {0, 3}
    assert abs((ids == 0).float().mean().item() - 0.3 / 0.45) < 0.04


def test_draw_follows_the_probabilities_and_never_picks_a_zero() -> None:
    from forge.infer.sampling import draw

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0]]).expand(20_000, 6)
    ids = draw(probs, [torch.Generator().manual_seed(0)] * 20_000)
    frequencies = torch.bincount(ids, minlength=6).double() / 20_000
    assert frequencies[[0, 2, 5]].sum() == 0
    assert torch.allclose(frequencies, probs[0].double(), atol=0.015)
    unnormalised = draw(torch.tensor([[0.0, 0.0, 7.0]]), [None])  # weights need not sum to 1
    assert unnormalised.tolist() == [2]


def test_draw_uses_each_rows_own_generator() -> None:
    from forge.infer.sampling import draw

    probs = torch.softmax(torch.randn(3, 50), dim=-1)
    together = draw(probs, [torch.Generator().manual_seed(seed) for seed in (1, 2, 3)])
    alone = [int(draw(probs[i : i + 1], [torch.Generator().manual_seed(i + 1)])) for i in range(3)]
    assert together.tolist() == alone
    with pytest.raises(ValueError, match="3 rows of probabilities but 2 generators"):
        draw(probs, [None, None])


def _cut_alike(
    result: torch.Tensor, expected: torch.Tensor, logits: torch.Tensor, top_p: torch.Tensor
) -> None:
    """`result` cuts the tokens `expected` (sorting) cuts, and leaves the others' logits as they were.

    The two sum float32 probabilities in different orders, so a token whose exact mass before it lies
    within rounding of top_p may fall on either side; every other token must be cut alike."""
    sorted_probs, order = torch.softmax(logits.double(), dim=-1).sort(dim=-1, descending=True)
    mass_before = torch.empty_like(sorted_probs).scatter(-1, order, sorted_probs.cumsum(-1) - sorted_probs)
    at_threshold = (mass_before - top_p.double().reshape(-1, 1)).abs() < 1e-6
    differs = torch.isinf(result) != torch.isinf(expected)
    assert not (differs & ~at_threshold).any()
    assert torch.equal(result[~torch.isinf(result)], logits[~torch.isinf(result)])


# flat (a random model's), in between, a trained model's (scale 3: the 256 most likely tokens hold about
# 87% of the mass), peaked
@pytest.mark.parametrize("scale", [0.01, 0.4, 1.0, 3.0, 8.0])
@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.95, 0.99])
def test_top_p_by_bracket_cuts_exactly_where_sorting_does(scale: float, top_p: float) -> None:
    from forge.infer.sampling import _top_p_by_bracket, _top_p_by_sorting

    logits = (
        torch.randn(4, 8192, generator=torch.Generator().manual_seed(int(scale * 100 + top_p * 10))) * scale
    )
    bracketed = _top_p_by_bracket(logits, top_p)
    assert bracketed is not None  # decided without the full sort
    expected = _top_p_by_sorting(logits, top_p)
    for result in (bracketed, apply_top_p(logits, top_p)):
        _cut_alike(result, expected, logits, torch.full((4,), top_p))


def test_top_p_by_bracket_per_row_with_cut_tokens_and_rows_off() -> None:
    from forge.infer.sampling import _top_p_by_bracket, _top_p_by_sorting

    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 8192, generator=generator) * torch.tensor(
        [[0.4], [1.0], [3.0], [8.0], [2.0], [1.0]]
    )
    logits[1, ::3] = float("-inf")  # an earlier cut (top-k, min-p) left tokens of probability 0
    top_p = torch.tensor([0.9, 0.95, 0.5, 0.99, 1.0, 0.3])  # row 4: off
    bracketed = _top_p_by_bracket(logits, top_p)
    assert bracketed is not None
    expected = _top_p_by_sorting(logits, top_p)
    _cut_alike(bracketed, expected, logits, top_p)
    assert torch.equal(bracketed[4], logits[4])
    assert torch.isinf(bracketed[1, ::3]).all()


def test_top_p_by_bracket_leaves_rows_of_equal_probabilities_to_sorting() -> None:
    from forge.infer.sampling import _top_p_by_bracket, _top_p_by_sorting

    flat = torch.zeros(2, 8192)  # one band of 8192 tokens: ordering it costs what sorting costs
    assert _top_p_by_bracket(flat, 0.5) is None
    assert torch.equal(apply_top_p(flat, 0.5), _top_p_by_sorting(flat, 0.5))
