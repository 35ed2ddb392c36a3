"""The engine and KV cache on a tiny real Transformer: cached decoding equals recomputing from scratch."""

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from forge.errors import ForgeError
from forge.infer.engine import Generation, decode_one_token, generate_ids, generate_text, prefill
from forge.infer.kv_cache import KVCache
from forge.infer.sampling import SamplingConfig
from forge.model.config import ModelConfig
from forge.model.transformer import Transformer
from forge.tokenizer.bpe import TokenizerConfig, train_tokenizer

PROMPT = [5, 17, 3, 42]


def _model(context_length: int = 32, vocab_size: int = 64) -> Transformer:
    # init_std 0.5: at the default 0.02 a random model's greedy output repeats one token, a weak test
    config = ModelConfig(
        vocab_size=vocab_size,
        context_length=context_length,
        dim=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        init_std=0.5,
    )
    return Transformer(config).eval()


def _greedy(max_new_tokens: int, **kwargs: object) -> SamplingConfig:
    return SamplingConfig(temperature=0, max_new_tokens=max_new_tokens, stop_on_eos=False, **kwargs)


@torch.no_grad()
def _greedy_from_scratch(model: Transformer, prompt: list[int], steps: int) -> list[int]:
    """Reference: a full forward pass over the whole sequence for every new token, no cache."""
    ids = list(prompt)
    for _ in range(steps):
        logits = model(torch.tensor([ids]))  # (1, T, V)
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


def test_greedy_with_cache_equals_recomputing_every_step() -> None:
    model = _model()
    generation = generate_ids(model, PROMPT, _greedy(20))
    ids = list(generation)
    assert ids == _greedy_from_scratch(model, PROMPT, 20)
    assert len(set(ids)) > 5, "a varied sequence, so that a wrong cache would show"
    assert generation.finish_reason == "length" and generation.generated_tokens == 20


@torch.no_grad()
def test_prefill_and_decode_logits_match_a_full_forward() -> None:
    model = _model()
    ids = torch.tensor([PROMPT + [7, 8, 9]])  # (1, 7)
    full = model(ids)  # (1, 7, V)
    cache = KVCache.for_model(model, batch_size=1)
    assert torch.allclose(prefill(model, ids[:, :4], cache), full[:, 3], atol=1e-5)
    for position in range(4, 7):
        logits = decode_one_token(model, ids[:, position], torch.tensor([position]), cache)
        assert torch.allclose(logits, full[:, position], atol=1e-5)


def test_same_seed_reproduces_and_different_seeds_differ() -> None:
    model = _model()

    def run(seed: int) -> list[int]:
        config = SamplingConfig(temperature=1.0, max_new_tokens=20, seed=seed, stop_on_eos=False)
        return list(generate_ids(model, PROMPT, config))

    assert run(1) == run(1)
    assert run(1) != run(2)
    generation = generate_ids(model, PROMPT, SamplingConfig(temperature=1.0, max_new_tokens=5))
    replay = SamplingConfig(temperature=1.0, max_new_tokens=5, seed=generation.seed)
    assert list(generation) == list(generate_ids(model, PROMPT, replay)), "the seed used is recorded"


def test_top_k_1_and_temperature_0_are_greedy() -> None:
    model = _model()
    greedy = list(generate_ids(model, PROMPT, _greedy(12)))
    top_1 = SamplingConfig(temperature=1.5, top_k=1, max_new_tokens=12, seed=3, stop_on_eos=False)
    assert list(generate_ids(model, PROMPT, top_1)) == greedy


def test_stops_on_eos_without_yielding_it() -> None:
    model = _model()
    greedy = list(generate_ids(model, PROMPT, _greedy(12)))
    # call the first token that is not a repeat "EOS": greedy decoding must stop right before it
    stop_at = next(i for i in range(1, 12) if greedy[i] not in greedy[:i])
    eos = greedy[stop_at]
    config = SamplingConfig(temperature=0, max_new_tokens=12)
    generation = generate_ids(model, PROMPT, config, eos_ids={eos, 10_000})
    assert list(generation) == greedy[:stop_at]
    assert generation.finish_reason == "stop" and generation.generated_tokens == stop_at
    ignoring = generate_ids(model, PROMPT, _greedy(12), eos_ids={eos})  # stop_on_eos=False
    assert list(ignoring) == greedy


def test_forced_eos_stops_at_once() -> None:
    model = _model()
    bias = torch.zeros(64)
    bias[1] = 1e4  # id 1 wins every step
    model.lm_head.register_forward_hook(lambda module, inputs, output: output + bias)
    generation = generate_ids(model, PROMPT, SamplingConfig(temperature=1.0, seed=0), eos_ids={1})
    assert list(generation) == [] and generation.finish_reason == "stop"
    assert list(generate_ids(model, PROMPT, _greedy(4), eos_ids={1})) == [1, 1, 1, 1]


def test_max_new_tokens_is_respected() -> None:
    generation = generate_ids(_model(), PROMPT, SamplingConfig(temperature=1.0, max_new_tokens=5, seed=0))
    assert len(list(generation)) == 5 and generation.finish_reason == "length"
    assert generation.prompt_tokens_per_s > 0 and generation.tokens_per_s > 0


def test_a_full_context_stops_with_length() -> None:
    model = _model(context_length=16)
    generation = generate_ids(model, list(range(10)), _greedy(100))
    ids = list(generation)
    # 10 prompt tokens fill positions 0..9; tokens fed at 10..15 predict 6 more, plus the prefill's one
    assert len(ids) == 7 and generation.finish_reason == "length"
    assert ids == _greedy_from_scratch(model, list(range(10)), 7)
    assert len(list(generate_ids(model, list(range(16)), _greedy(5)))) == 1  # a prompt that fills it


def test_bad_prompts_raise_forge_errors() -> None:
    model = _model(context_length=16)
    with pytest.raises(ForgeError, match=r"17 tokens.*context holds 16.*max-new-tokens"):
        generate_ids(model, list(range(17)), _greedy(5))
    with pytest.raises(ForgeError, match="no tokens"):
        generate_ids(model, [], _greedy(5))
    with pytest.raises(ForgeError, match="vocabulary of 64"):
        generate_ids(model, [3, 64], _greedy(5))


def test_inference_mode_does_not_leak_between_tokens() -> None:
    for _ in generate_ids(_model(), PROMPT, _greedy(3)):
        assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()


def test_generate_text_streams_the_decoded_ids() -> None:
    tokenizer = train_tokenizer(["héllo wörld 🙂 日本", "the cat sat"] * 10, TokenizerConfig(vocab_size=280))
    model = _model(vocab_size=tokenizer.vocab_size)
    config = SamplingConfig(temperature=1.0, max_new_tokens=16, seed=4)
    text = generate_text(model, tokenizer, "héllo", config, heal=False)
    pieces = list(text)
    ids = list(generate_ids(model, [tokenizer.eos_id, *tokenizer.encode("héllo")], config))
    ids = ids[: text.generation.generated_tokens]  # generate_ids here does not stop at end-of-turn
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)
    assert text.generation.finish_reason in ("stop", "length")


def test_token_healing_regenerates_the_last_prompt_token() -> None:
    tokenizer = train_tokenizer(["def add(a, b):\n    return a + b\n"] * 20, TokenizerConfig(vocab_size=300))
    token_bytes = tokenizer.token_bytes()
    model = _model(vocab_size=tokenizer.vocab_size)
    prompt = "def "  # the tokenizer attaches the space to the next word: "def", " add"
    ids = tokenizer.encode(prompt)
    healed = token_bytes[ids[-1]]
    assert healed == b" "
    for seed in range(5):
        config = SamplingConfig(temperature=1.0, max_new_tokens=6, seed=seed, stop_on_eos=False)
        text = generate_text(model, tokenizer, prompt, config)
        out = "".join(text)
        output_ids = text.generation.output_ids
        assert token_bytes[output_ids[0]].startswith(healed)  # the first token re-creates the space
        assert prompt + out == tokenizer.decode(ids[:-1] + output_ids, skip_special_tokens=True)
    unhealed = generate_text(
        model, tokenizer, prompt, SamplingConfig(temperature=0, max_new_tokens=3), heal=False
    )
    list(unhealed)
    assert unhealed.generation.prompt_ids == [tokenizer.eos_id, *ids]


# ---------------------------------------------------------------------------------------------------------
# KV cache


def test_cache_for_model_takes_its_shapes_and_dtype() -> None:
    model = _model(context_length=24).to(torch.bfloat16)
    cache = KVCache.for_model(model, batch_size=3, max_seq_len=10)
    assert len(cache.keys) == len(cache.values) == 2  # one pair per layer
    assert all(t.shape == (3, 2, 10, 8) for t in cache.keys + cache.values)  # (B, H_kv, S, D)
    assert cache.keys[0].dtype == torch.bfloat16 and KVCache.for_model(model, 1).max_seq_len == 24
    with pytest.raises(ValueError):
        KVCache.for_model(model, 1, max_seq_len=25)


def test_cache_per_row_path_matches_the_fast_path() -> None:
    B, H, T, S, D = 3, 2, 4, 10, 5
    k, v = torch.randn(B, H, T, D), torch.randn(B, H, T, D)
    shared = torch.arange(3, 3 + T).expand(B, T)  # stride 0 along the batch: index_copy_
    fast, general = KVCache(2, B, H, S, D), KVCache(2, B, H, S, D)
    fast.update(1, shared, k, v)
    k_all, v_all = general.update(1, shared.contiguous(), k, v)  # same values, per-row layout
    pairs = zip(fast.keys + fast.values, general.keys + general.values, strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert k_all is general.keys[1] and torch.equal(k_all[:, :, 3:7], k) and torch.equal(v_all[:, :, 3:7], v)
    assert general.keys[0].abs().sum() == 0 and general.keys[1][:, :, :3].abs().sum() == 0


def test_cache_per_row_positions_write_each_row_at_its_own_place() -> None:
    B, H, S, D = 2, 2, 8, 3
    k, v = torch.randn(B, H, 2, D), torch.randn(B, H, 2, D)
    cache = KVCache(1, B, H, S, D)
    cache.update(0, torch.tensor([[0, 1], [5, 6]]), k, v)
    assert torch.equal(cache.keys[0][0, :, 0:2], k[0]) and torch.equal(cache.values[0][1, :, 5:7], v[1])
    assert cache.keys[0][0, :, 2:].abs().sum() == 0 and cache.keys[0][1, :, :5].abs().sum() == 0
    cache.select_rows(torch.tensor([1, 1, 0]))
    assert cache.batch_size == 3 and torch.equal(cache.keys[0][1, :, 5:7], k[1])
    assert torch.equal(cache.keys[0][2, :, 0:2], k[0])
    cache.reset()
    assert all(t.abs().sum() == 0 for t in cache.keys + cache.values)


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler")
def test_compiled_decode_gives_the_same_tokens_and_belongs_to_one_model() -> None:
    from forge.infer.batch import generate_batch
    from forge.infer.engine import cache_length, compile_decode

    model = _model()
    config = _greedy(8)
    step = compile_decode(model, autotune=False)  # the same code path, without the kernel benchmarks
    eager = list(generate_ids(model, PROMPT, config))
    generation = Generation(model, PROMPT, config, eos_ids=(), device=torch.device("cpu"), decode_fn=step)
    assert list(generation) == eager
    assert generation.cache.max_seq_len == 32  # bucketed to 64, capped at the context
    assert [cache_length(n, 1000, bucketed=True) for n in (12, 64, 65, 999)] == [64, 64, 128, 1000]
    prompts = [PROMPT, PROMPT[:3]]
    batch = generate_batch(model, prompts, config, decode_fn=step)  # per-row positions, compiled
    assert [c.token_ids for c in batch] == [c.token_ids for c in generate_batch(model, prompts, config)]
    with pytest.raises(ValueError, match="belongs to another model"):
        step(_model(), torch.tensor([1]), torch.tensor([0]), KVCache.for_model(model, 1))
    # a layout compiled before runs without compiling; a guard its layout does not cover (deterministic
    # algorithms) still compiles, with the settings, instead of failing
    from torch._dynamo.utils import counters

    def logits_at(position: int) -> torch.Tensor:
        with torch.inference_mode():
            cache = KVCache.for_model(model, 1, generation.cache.max_seq_len)
            prefill(model, torch.tensor([PROMPT]), cache)
            return step(model, torch.tensor([eager[0]]), torch.tensor([position]), cache)

    expected_logits = logits_at(len(PROMPT))
    graphs = counters["stats"]["unique_graphs"]
    assert torch.equal(logits_at(len(PROMPT)), expected_logits)
    assert counters["stats"]["unique_graphs"] == graphs
    torch.use_deterministic_algorithms(True)
    try:
        torch.testing.assert_close(logits_at(len(PROMPT)), expected_logits)
    finally:
        torch.use_deterministic_algorithms(False)
    assert counters["stats"]["unique_graphs"] == graphs + 1
    # a second model of the same shape, compiled after the first, runs its own weights, not the first's
    other = _model()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(-1)
    other_step = compile_decode(other, autotune=False)
    expected = list(generate_ids(other, PROMPT, config))
    assert expected != eager
    assert list(generate_ids(other, PROMPT, config, decode_fn=other_step)) == expected


def test_chat_keeps_the_system_message_and_the_turns_that_fit() -> None:
    from forge.infer.engine import generate_chat
    from forge.tokenizer.chat import render

    tokenizer = train_tokenizer(
        ["hello there, how are you? fine thanks."] * 20, TokenizerConfig(vocab_size=300)
    )
    model = _model(context_length=48, vocab_size=tokenizer.vocab_size)
    system = {"role": "system", "content": "be brief"}
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"hello there {i}"} for i in range(9)]
    config = SamplingConfig(temperature=0, max_new_tokens=8)
    answer = generate_chat(model, tokenizer, [system, *turns], config)
    text = "".join(answer)
    prompt = answer.generation.prompt_ids
    assert len(prompt) <= 48 - 8 and prompt[:2] == [tokenizer.bos_id, 3]  # BOS, then <|system|>
    kept_turns = next(
        turns[i:]
        for i in range(len(turns))
        if render(tokenizer, [system, *turns[i:]], add_generation_prompt=True)[0] == prompt
    )
    assert kept_turns[-1] == turns[-1] and len(kept_turns) < len(turns)
    assert answer.generation.generated_tokens <= 8 and isinstance(text, str)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler")
def test_compiled_decode_autotunes_without_printing_its_tables(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from forge.infer.engine import compile_decode

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # no cached kernel choice: it autotunes
    model = _model()
    step = compile_decode(model)  # with autotuning: inductor would print a table per matmul shape
    assert list(generate_ids(model, PROMPT, _greedy(4), decode_fn=step)) == list(
        generate_ids(model, PROMPT, _greedy(4))
    )
    printed = capfd.readouterr().err
    assert "AUTOTUNE" not in printed and "Autotune Choices Stats" not in printed


def test_decode_speed_leaves_out_the_first_step_which_compiles(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import forge.infer.engine as engine

    clock = [0.0]

    def tick() -> float:  # every reading of the clock is 1 ms later than the last
        clock[0] += 0.001
        return clock[0]

    monkeypatch.setattr(engine, "time", types.SimpleNamespace(perf_counter=tick))
    steps: list[int] = []

    def compiling_first(
        model: nn.Module, token: torch.Tensor, position: torch.Tensor, cache: KVCache
    ) -> torch.Tensor:
        clock[0] += 0.0 if steps else 10.0  # the first call compiles for 10 s
        steps.append(int(position))
        return decode_one_token(model, token, position, cache)

    generation = Generation(
        _model(), PROMPT, _greedy(5), eos_ids=(), device=torch.device("cpu"), decode_fn=compiling_first
    )
    assert len(list(generation)) == 5 and len(steps) == 4
    assert generation.tokens_per_s == pytest.approx(1000)  # the 3 steps after the first, 1 ms each
    assert generation.prompt_tokens_per_s == pytest.approx(len(PROMPT) / 0.001)
