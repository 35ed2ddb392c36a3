"""The explain view: per-step probabilities as the sampler saw them, and attention probabilities that
reproduce the layer's real output when multiplied by its values (GQA), end to end through `forge generate`."""

import json
from functools import cache
from pathlib import Path

import pytest
import torch

from forge.cli.main import main
from forge.errors import ForgeError
from forge.infer.engine import generate_text
from forge.infer.explain import (
    Explainer,
    attention_weights,
    explain_json,
    explain_step,
    format_explain,
    plot_attention,
    token_texts,
)
from forge.infer.sampling import SamplingConfig
from forge.model.config import ModelConfig
from forge.model.io import save_model
from forge.model.transformer import Transformer
from forge.tokenizer.bpe import Tokenizer, TokenizerConfig, train_tokenizer

TRAINING_TEXTS = [
    "def count(items, start=0):\n    total = start\n    for item in items:\n        total += 1\n",
    "class Counter:\n\tdef __init__(self, value):\n\t\tself.value = value\n",
    "the quick brown fox jumps over the lazy dog, naïve café",
] * 20
PROMPT = "def count(items):\n    total"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@cache
def _tokenizer() -> Tokenizer:
    return train_tokenizer(TRAINING_TEXTS, TokenizerConfig(vocab_size=300, min_frequency=1))


def _model() -> Transformer:
    # init_std 0.5: a random model with sharp, varied distributions (at 0.02 every step is near uniform)
    config = ModelConfig(
        vocab_size=_tokenizer().vocab_size,
        context_length=32,
        dim=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        init_std=0.5,
    )
    return Transformer(config).eval()


def _prompt_ids() -> list[int]:
    tokenizer = _tokenizer()
    return [tokenizer.eos_id, *tokenizer.encode(PROMPT)]


def test_attention_rows_are_causal_probability_distributions() -> None:
    model, ids = _model(), _prompt_ids()
    for head in (None, 0, 3):
        weights = attention_weights(model, ids, layer=1, head=head)
        assert weights.shape == (len(ids), len(ids))
        torch.testing.assert_close(weights.sum(-1), torch.ones(len(ids)))
        assert (weights.triu(1) == 0).all()
        assert weights[0, 0] == 1  # the first token can only attend to itself


@torch.no_grad()
def test_attention_weights_times_values_reproduce_the_layer_output() -> None:
    model, ids = _model(), _prompt_ids()
    layer = 1
    block = model.model.layers[layer]
    attn = block.self_attn
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        block.input_layernorm.register_forward_hook(lambda _m, _i, out: captured.update(x=out)),
        attn.register_forward_hook(lambda _m, _i, out: captured.update(y=out)),
    ]
    model(torch.tensor([ids]))
    for hook in hooks:
        hook.remove()
    T, D = len(ids), attn.head_dim
    groups = attn.num_heads // attn.num_kv_heads
    v = attn.v_proj(captured["x"][0]).view(T, attn.num_kv_heads, D)  # (T, H_kv, D)
    per_head = [attention_weights(model, ids, layer, head) for head in range(attn.num_heads)]
    y = torch.cat([w @ v[:, h // groups] for h, w in enumerate(per_head)], dim=-1)  # (T, H * D)
    torch.testing.assert_close(attn.o_proj(y), captured["y"][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(attention_weights(model, ids, layer, None), torch.stack(per_head).mean(0))


@pytest.mark.parametrize(
    ("layer", "head", "flag"),
    [(2, None, "--attention-layer"), (-1, None, "--attention-layer"), (0, 4, "--attention-head")],
)
def test_attention_target_outside_the_model_names_the_flag(layer: int, head: int | None, flag: str) -> None:
    with pytest.raises(ForgeError, match=flag):
        attention_weights(_model(), _prompt_ids(), layer, head)


def _explained(temperature: float) -> tuple[Explainer, list[int], list[torch.Tensor]]:
    tokenizer, model = _tokenizer(), _model()
    explainer = Explainer(token_texts(tokenizer), temperature=temperature, top_n=5)
    seen: list[torch.Tensor] = []

    def on_token(logits: torch.Tensor, token_id: int) -> None:
        seen.append(logits.clone())
        explainer(logits, token_id)

    config = SamplingConfig(temperature=temperature, max_new_tokens=8, stop_on_eos=False, seed=3)
    text = generate_text(model, tokenizer, PROMPT, config, heal=False, on_token=on_token)
    list(text)
    return explainer, text.generation.output_ids, seen


def test_explainer_records_one_step_per_token_with_the_sampler_probabilities() -> None:
    explainer, output_ids, logits = _explained(temperature=0.7)
    assert len(explainer.steps) == len(output_ids) == 8
    for step, token_id, step_logits in zip(explainer.steps, output_ids, logits, strict=True):
        assert step.chosen.token_id == token_id
        expected = torch.softmax(step_logits / 0.7, -1)
        assert step.chosen.probability == pytest.approx(float(expected[token_id]), rel=1e-5)
        assert step.rank == 1 + int((expected > expected[token_id]).sum())
        probabilities = [c.probability for c in step.top]
        assert len(step.top) == 5 and probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) <= 1 + 1e-6


def test_greedy_chooses_the_top_candidate_at_every_step() -> None:
    explainer, output_ids, logits = _explained(temperature=0.0)
    assert [step.top[0].token_id for step in explainer.steps] == output_ids
    for step, step_logits in zip(explainer.steps, logits, strict=True):
        assert step.rank == 1
        assert step.chosen.probability == pytest.approx(float(torch.softmax(step_logits, -1).max()), rel=1e-5)


def test_a_chosen_token_outside_the_top_n_is_shown_with_its_rank() -> None:
    texts = ["a", " b", "\n", "c\td", "e"]
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    step = explain_step(logits, 3, texts, temperature=1.0, top_n=2)
    assert step.rank == 4 and [c.token_id for c in step.top] == [0, 1]
    assert step.chosen.probability == pytest.approx(float(torch.softmax(logits, -1)[3]))
    table = format_explain([step])
    assert "→   4. 'c\\td'" in table and "'\\n'" not in table and "█" in table
    assert table.count("→") == 1
    data = explain_json([step])
    assert json.loads(json.dumps(data)) == data
    assert data[0]["rank"] == 4 and not any(c["chosen"] for c in data[0]["top"])


def test_format_explain_marks_the_chosen_token() -> None:
    explainer, _, _ = _explained(temperature=0.0)
    table = format_explain(explainer.steps)
    assert table.count("→") == len(explainer.steps) == table.count("step ")


def test_long_prompts_plot_their_last_tokens(tmp_path: Path) -> None:
    T = 60
    weights = torch.rand(T, T).tril()
    weights /= weights.sum(-1, keepdim=True)
    path = tmp_path / "attention.png"
    plot_attention(weights, [f"tok{i}\n" for i in range(T)], path, "attention")
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def _saved_run(root: Path) -> Path:
    run = root / "run"
    save_model(_model(), run)
    _tokenizer().save(run / "tokenizer")
    return run


def test_cli_explains_and_plots_attention(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = _saved_run(tmp_path)
    report, plot = tmp_path / "explain.json", tmp_path / "attention.png"
    argv = ["generate", str(run), PROMPT, "--max-new-tokens", "6", "--temperature", "0", "--explain"]
    assert main([*argv, "--explain-json", str(report), "--attention", str(plot)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(PROMPT) and "→" in out and "step 1:" in out
    assert plot.read_bytes()[:8] == PNG_SIGNATURE
    data = json.loads(report.read_text())
    assert data["prompt"] == PROMPT and 1 <= len(data["steps"]) <= 7  # 6 tokens, or fewer and the EOS
    assert all(step["rank"] == 1 for step in data["steps"])
    # token healing masks the first step: tokens it ruled out (probability 0) are not listed as candidates
    assert all(c["probability"] > 0 for step in data["steps"] for c in step["top"])


def test_cli_bad_attention_layer_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run, plot = _saved_run(tmp_path), tmp_path / "attention.png"
    argv = ["generate", str(run), "def", "--attention", str(plot), "--attention-layer", "5"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--attention-layer" in err and "between 0 and 1" in err and "Traceback" not in err
    assert not plot.exists()
