"""Batched generation: mixed lengths, per-request settings and seeds, n samples, stops, context limits."""

import pytest
import torch

from forge.errors import ForgeError
from forge.infer.batch import generate_batch
from forge.infer.engine import generate_ids
from forge.infer.sampling import SamplingConfig
from forge.model.config import ModelConfig
from forge.model.transformer import Transformer
from forge.tokenizer.bpe import TokenizerConfig, train_tokenizer

PROMPTS = [[5, 17, 3, 42], [9], [60, 2, 2, 8, 30, 11, 7]]


def _model(vocab_size: int = 64, context_length: int = 32) -> Transformer:
    config = ModelConfig(vocab_size=vocab_size, context_length=context_length, dim=32, num_layers=2,
                         num_heads=4, num_kv_heads=2, init_std=0.5)  # fmt: skip
    return Transformer(config).eval()


@torch.no_grad()
def _greedy_from_scratch(model: Transformer, prompt: list[int], steps: int) -> list[int]:
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


def test_mixed_length_batch_greedy_equals_recomputing_from_scratch() -> None:
    model = _model()
    config = SamplingConfig(temperature=0, max_new_tokens=10, stop_on_eos=False)
    completions = generate_batch(model, PROMPTS, config)
    assert [c.request for c in completions] == [0, 1, 2]
    for prompt, completion in zip(PROMPTS, completions, strict=True):
        assert completion.token_ids == _greedy_from_scratch(model, prompt, 10)
        assert completion.finish_reason == "length"


def test_seeded_requests_do_not_depend_on_the_batch() -> None:
    model = _model()
    mine = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=12, seed=7, stop_on_eos=False)
    others = [SamplingConfig(temperature=0.5, top_k=5, max_new_tokens=5, seed=1, stop_on_eos=False),
              SamplingConfig(temperature=0, max_new_tokens=12, stop_on_eos=False)]  # fmt: skip
    alone = generate_batch(model, [PROMPTS[0]], mine)[0].token_ids
    in_batch = generate_batch(model, [PROMPTS[1], PROMPTS[0], PROMPTS[2]], [others[0], mine, others[1]])
    assert in_batch[1].token_ids == alone
    assert list(generate_ids(model, PROMPTS[0], mine)) == alone  # the one-request engine agrees
    assert in_batch[2].token_ids == _greedy_from_scratch(model, PROMPTS[2], 12)  # per-request settings
    assert len(in_batch[0].token_ids) == 5


def test_n_samples_share_a_prefill_and_are_seeded_one_by_one() -> None:
    model = _model()
    config = SamplingConfig(temperature=1.0, max_new_tokens=8, seed=100, n=3, stop_on_eos=False)
    completions = generate_batch(model, [PROMPTS[0]], config)
    assert [(c.request, c.sample, c.seed) for c in completions] == [(0, 0, 100), (0, 1, 101), (0, 2, 102)]
    assert len({tuple(c.token_ids) for c in completions}) == 3
    single = SamplingConfig(temperature=1.0, max_new_tokens=8, seed=102, stop_on_eos=False)
    assert completions[2].token_ids == list(generate_ids(model, PROMPTS[0], single))


def test_min_new_tokens_holds_back_end_of_sequence() -> None:
    model = _model()
    eos = 1
    forced = SamplingConfig(temperature=0, max_new_tokens=10, logit_bias=("1:100",), min_new_tokens=3)
    completion = generate_batch(model, [PROMPTS[0]], forced, eos_ids=[eos])[0]
    assert len(completion.token_ids) == 3 and eos not in completion.token_ids
    assert completion.finish_reason == "stop"
    one = list(generate_ids(model, PROMPTS[0], forced, eos_ids=[eos]))
    assert one == completion.token_ids


def test_stop_strings_cut_the_text_and_end_the_sample() -> None:
    tokenizer = train_tokenizer(
        ["the cat sat on the mat. " * 4, "a dog ran"] * 10, TokenizerConfig(vocab_size=280)
    )
    model = _model(vocab_size=tokenizer.vocab_size)
    token_bytes = tokenizer.token_bytes()
    prompt = [tokenizer.eos_id, *tokenizer.encode("the cat")]
    free = SamplingConfig(temperature=0, max_new_tokens=20, stop_on_eos=False)
    text = generate_batch(model, [prompt], free, token_bytes=token_bytes)[0].text
    stop = text[5:8]  # a piece of what it would write, crossing token boundaries or not
    assert stop and len(text) > 8
    stopped = SamplingConfig(
        temperature=0, max_new_tokens=20, stop_on_eos=False, stop=(stop, "never-appears")
    )
    completion = generate_batch(model, [prompt], stopped, token_bytes=token_bytes)[0]
    assert completion.text == text[: text.index(stop)]
    assert completion.finish_reason == "stop" and completion.stop_string == stop


def test_context_limits() -> None:
    model = _model(context_length=16)
    long_prompt = list(range(2, 22))  # 20 tokens, context 16
    config = SamplingConfig(temperature=0, max_new_tokens=4, stop_on_eos=False)
    with pytest.raises(ForgeError, match="--truncate-prompt"):
        generate_batch(model, [long_prompt], config)
    truncating = SamplingConfig(temperature=0, max_new_tokens=4, stop_on_eos=False, truncate_prompt=True)
    completion = generate_batch(model, [long_prompt], truncating)[0]
    assert completion.token_ids == _greedy_from_scratch(model, long_prompt[-12:], 4)  # kept: 16 - 4
    near_end = SamplingConfig(temperature=0, max_new_tokens=50, stop_on_eos=False)
    completion = generate_batch(model, [list(range(2, 12))], near_end)[0]
    assert len(completion.token_ids) == 16 - 10 + 1 and completion.finish_reason == "length"
    assert len(list(generate_ids(model, list(range(2, 12)), near_end))) == len(completion.token_ids)
