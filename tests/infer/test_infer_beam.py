"""Beam search against greedy decoding and against an exhaustive search on a tiny vocabulary."""

import itertools

import pytest
import torch

from forge.errors import ConfigError
from forge.infer.beam import beam_search
from forge.infer.engine import generate_ids
from forge.infer.sampling import SamplingConfig
from forge.model.config import ModelConfig
from forge.model.transformer import Transformer

PROMPT = [3, 1, 4]


def _model(vocab_size: int) -> Transformer:
    config = ModelConfig(vocab_size=vocab_size, context_length=16, dim=32, num_layers=2, num_heads=4,
                         num_kv_heads=2, init_std=0.5)  # fmt: skip
    return Transformer(config).eval()


@torch.no_grad()
def _logprob(model: Transformer, prompt: list[int], continuation: list[int]) -> float:
    ids = torch.tensor([prompt + continuation])
    logprobs = torch.log_softmax(model(ids)[0, len(prompt) - 1 : -1], dim=-1)
    return float(logprobs[torch.arange(len(continuation)), torch.tensor(continuation)].sum())


def _beams(num_beams: int, n: int = 1, **kwargs: object) -> SamplingConfig:
    return SamplingConfig(
        temperature=0, max_new_tokens=3, num_beams=num_beams, n=n, stop_on_eos=False, **kwargs
    )


def test_one_beam_is_greedy() -> None:
    model = _model(16)
    [best] = beam_search(model, PROMPT, _beams(1))
    greedy = SamplingConfig(temperature=0, max_new_tokens=3, stop_on_eos=False)
    assert best.token_ids == list(generate_ids(model, PROMPT, greedy))
    assert best.logprob == pytest.approx(_logprob(model, PROMPT, best.token_ids), abs=1e-4)


def test_wide_beams_find_the_exhaustive_optimum() -> None:
    model = _model(8)
    everything = [list(seq) for seq in itertools.product(range(8), repeat=3)]
    scores = sorted(((_logprob(model, PROMPT, seq), seq) for seq in everything), reverse=True)
    results = beam_search(model, PROMPT, _beams(64, n=3))
    assert [h.token_ids for h in results] == [seq for _, seq in scores[:3]]
    for h, (score, _) in zip(results, scores, strict=False):
        assert h.logprob == pytest.approx(score, abs=1e-4) and h.finish_reason == "length"
    narrow = beam_search(model, PROMPT, _beams(2))[0]
    assert narrow.logprob <= results[0].logprob + 1e-6


def test_finished_hypotheses_and_length_penalty() -> None:
    model = _model(8)
    eos = 0
    config = SamplingConfig(temperature=0, max_new_tokens=4, num_beams=4, n=4, length_penalty=1.0)
    results = beam_search(model, PROMPT, config, eos_ids=[eos])
    assert [h.score for h in results] == sorted((h.score for h in results), reverse=True)
    for h in results:
        assert eos not in h.token_ids
        assert h.score == pytest.approx(h.logprob / max(len(h.token_ids), 1))
        full = h.token_ids + ([eos] if h.finish_reason == "stop" else [])
        assert h.logprob == pytest.approx(_logprob(model, PROMPT, full), abs=1e-4)


def test_more_answers_than_beams_is_refused() -> None:
    with pytest.raises(ConfigError, match="--num-beams"):
        beam_search(_model(8), PROMPT, _beams(2, n=3))
