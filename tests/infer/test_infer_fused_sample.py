"""The compiled sampler: the nucleus found without sorting, the fused draw against `sample`, the fallback."""

import shutil

import pytest
import torch

from forge.infer.fused_sample import compiled_sample, fusable, fused_sample, nucleus_threshold
from forge.infer.sampling import SamplingConfig, _top_p_by_sorting, sample
from forge.model.config import ModelConfig
from forge.model.transformer import Transformer


def _kept_alike(kept: torch.Tensor, logits: torch.Tensor, top_p: torch.Tensor) -> None:
    """`kept` (B, V) is the sorting cut of logits, except for a token whose better tokens hold p (± 1e-6)."""
    expected = ~torch.isinf(_top_p_by_sorting(logits, top_p))
    probs = torch.softmax(logits.double(), dim=-1)
    mass_before = (probs[:, None, :] * (probs[:, None, :] > probs[:, :, None])).sum(-1)  # (B, V)
    at_threshold = (mass_before - top_p.double().reshape(-1, 1)).abs() < 1e-6
    assert not ((kept != expected) & ~at_threshold).any()


# flat (a random model's), a trained model's, peaked
@pytest.mark.parametrize("scale", [0.01, 1.0, 3.0, 8.0])
@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.95, 0.99])
def test_nucleus_threshold_cuts_where_sorting_does(scale: float, top_p: float) -> None:
    generator = torch.Generator().manual_seed(int(scale * 100 + top_p * 10))
    logits = torch.randn(4, 2048, generator=generator) * scale
    p = torch.full((4, 1), top_p)
    threshold = nucleus_threshold(torch.softmax(logits, dim=-1), p)  # (4, 1)
    kept = torch.softmax(logits, dim=-1) >= threshold
    _kept_alike(kept, logits, p.squeeze(1))
    assert kept.any(dim=-1).all()  # the most likely token always stays


def test_nucleus_threshold_per_row_with_cut_tokens_and_ties() -> None:
    logits = torch.randn(3, 1024, generator=torch.Generator().manual_seed(3)) * 2
    logits[0, ::2] = float("-inf")  # tokens of probability 0, cut earlier
    logits[2] = 0.0  # equal probabilities: the threshold keeps every tied token, sorting only enough of them
    top_p = torch.tensor([[0.9], [0.3], [0.5]])
    probs = torch.softmax(logits, dim=-1)
    kept = probs >= nucleus_threshold(probs, top_p)
    _kept_alike(kept[:2], logits[:2], top_p[:2].squeeze(1))
    assert not kept[0, ::2].any()
    assert kept[2].all()


def test_fused_sample_draws_what_sample_draws() -> None:
    logits = torch.randn(4, 512, generator=torch.Generator().manual_seed(0)) * 3
    for temperature, top_p, min_p in [(0.8, 0.95, 0.0), (1.0, 1.0, 0.0), (0.7, 0.5, 0.1), (1.3, 0.9, 0.05)]:
        config = SamplingConfig(temperature=temperature, top_p=top_p, min_p=min_p)
        settings = [torch.tensor([[value]]) for value in (temperature, top_p, min_p)]
        for seed in range(25):
            ours = [torch.Generator().manual_seed(seed + row) for row in range(4)]
            theirs = [torch.Generator().manual_seed(seed + row) for row in range(4)]
            uniform = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in ours])
            assert torch.equal(fused_sample(logits, *settings, uniform), sample(logits, config, theirs))


def test_compiled_sample_leaves_the_settings_it_does_not_cover_to_sample() -> None:
    logits = torch.randn(2, 64, generator=torch.Generator().manual_seed(1))
    seen = torch.zeros(2, 64, dtype=torch.bool)
    seen[:, :5] = True
    counts = seen.int()
    for config in [
        SamplingConfig(temperature=0),
        SamplingConfig(temperature=0.9, top_k=5),
        SamplingConfig(temperature=0.9, repetition_penalty=1.3),
        SamplingConfig(temperature=0.9, presence_penalty=0.5),
        SamplingConfig(temperature=0.9, logit_bias=("3:5",)),
    ]:
        assert not fusable(config)
        drawn = [
            fn(
                logits,
                config,
                [torch.Generator().manual_seed(row) for row in range(2)],
                seen=seen,
                counts=counts,
            )
            for fn in (compiled_sample, sample)
        ]
        assert torch.equal(drawn[0], drawn[1])
    assert fusable(SamplingConfig(temperature=0.9, top_p=0.9, min_p=0.05))


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler")
def test_a_custom_decode_step_samples_with_the_compiled_kernel_and_the_same_seeds() -> None:
    from forge.infer.batch import generate_batch
    from forge.infer.engine import decode_one_token, generate_ids

    config = ModelConfig(vocab_size=64, context_length=32, dim=32, num_layers=2, num_heads=4, init_std=0.5)
    model = Transformer(config).eval()
    sampling = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=12, seed=7, stop_on_eos=False)
    prompt = [5, 9, 2, 7]
    eager = list(generate_ids(model, prompt, sampling))
    assert list(generate_ids(model, prompt, sampling, decode_fn=decode_one_token)) == eager  # batch of 1
    batch_config = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=12, seed=7, n=2)
    prompts = [prompt, [3, 3, 8]]
    compiled = generate_batch(model, prompts, batch_config, decode_fn=decode_one_token)  # batch of 4
    assert [c.token_ids for c in compiled] == [
        c.token_ids for c in generate_batch(model, prompts, batch_config)
    ]
