"""Reward model: the score is read at each sequence's last token, the held-out split keeps prompts apart, a
tiny model learns a separable preference set, every weight trains, and the run directory round-trips."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny_prefs import CONFIG, preference_pairs

from forge.align.pairs import encode_pairs, split_pairs
from forge.align.reward import (
    RewardConfig,
    RewardEnsemble,
    RewardModel,
    ScoreConfig,
    load_reward_model,
    load_reward_models,
    save_reward_model,
    score_answers,
    score_file,
    train_reward_model,
)
from forge.errors import CheckpointError
from forge.model.io import load_model
from forge.model.transformer import Transformer
from forge.runtime import seed_everything
from forge.tokenizer.bpe import Tokenizer


@pytest.fixture(scope="module")
def prefs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prefs") / "prefs.jsonl"
    path.write_text("".join(json.dumps(pair) + "\n" for pair in preference_pairs()))
    return path


def _config(base: Path, data: Path, out: Path, **options: object) -> RewardConfig:
    values: dict = {"max_steps": 30, "lr": 1e-3, "batch_size": 8, "warmup_steps": 5, "val_fraction": 0.3,
                    "eval_every": 0, "log_every": 10, "checkpoint_every": 0, "progress": False,
                    "threads": 1, **options}  # fmt: skip
    return RewardConfig(base=str(base), data=str(data), out=str(out), **values)


@pytest.fixture(scope="module")
def trained(base_run: Path, prefs: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "reward"
    return out, train_reward_model(_config(base_run, prefs, out))


def _gated(likelihood: bool, tie_embeddings: bool = True) -> RewardModel:
    """A reward model of random weights, its gate (if any) random too, so the likelihood term is not ~0."""
    torch.manual_seed(0)
    model = RewardModel(Transformer(replace(CONFIG, tie_embeddings=tie_embeddings)), likelihood=likelihood)
    if likelihood:
        torch.nn.init.normal_(model.likelihood_gate.weight, std=1.0)
    return model.eval()


@pytest.mark.parametrize("likelihood", [False, True])
def test_the_reward_does_not_depend_on_the_padding(likelihood: bool) -> None:
    model = _gated(likelihood)
    short, long = torch.tensor([5, 6, 7]), torch.tensor([5, 6, 7, 8, 9, 10])
    padded = torch.stack([torch.cat([short, torch.zeros(3, dtype=torch.long)]), long])
    one = torch.tensor([1])
    with torch.no_grad():
        together = model(padded, torch.tensor([3, 6]), torch.tensor([1, 1]))
        alone = torch.cat(
            [model(short[None], torch.tensor([3]), one), model(long[None], torch.tensor([6]), one)]
        )
    assert together.shape == (2,)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_the_likelihood_term_is_the_gated_log_likelihood_of_the_answer_tokens(tie_embeddings: bool) -> None:
    model = _gated(True, tie_embeddings)
    lm = Transformer(model.body.config).eval()  # the same body with its lm_head, to compute the term by hand
    lm.load_state_dict(model.body.state_dict(), strict=False)
    if tie_embeddings:
        assert lm.lm_head.weight is lm.model.embed_tokens.weight
    ids, prompt_length = torch.tensor([[3, 9, 4, 12, 7, 30, 5]]), 3  # the answer: tokens 3..6
    with torch.no_grad():
        reward = model(ids, torch.tensor([7]), torch.tensor([prompt_length]))
        hidden, logits = lm.hidden_states(ids), lm(ids)
        logprobs = torch.log_softmax(logits[0], -1)
        gates = torch.sigmoid(model.likelihood_gate(hidden[0])).squeeze(-1)
        term = sum(gates[t] * logprobs[t - 1, ids[0, t]] for t in range(prompt_length, 7))
        last = model.score_head(hidden[0, -1])
        no_answer = model(ids, torch.tensor([7]), torch.tensor([7])) - last  # every token is prompt: no term
    torch.testing.assert_close(reward, last + term, atol=1e-5, rtol=1e-5)
    assert float(term) < 0 and abs(float(no_answer)) < 1e-5
    with torch.no_grad():
        total, terms = model.rewards_and_token_terms(ids, torch.tensor([7]), torch.tensor([prompt_length]))
    assert terms.shape == (1, 6) and terms[0, : prompt_length - 1].eq(0).all()  # terms of ids[:, 1:]
    torch.testing.assert_close(terms.sum(1), term.reshape(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(total, reward)


def test_the_held_out_split_keeps_each_prompt_on_one_side() -> None:
    pairs = [{"prompt": [{"role": "user", "content": f"q{i % 7}"}], "chosen": "a", "rejected": "b"}
             for i in range(70)]  # fmt: skip
    train, val = split_pairs(pairs, 0.3, seed=0)
    assert len(train) + len(val) == 70 and val and train
    assert not {p["prompt"][0]["content"] for p in train} & {p["prompt"][0]["content"] for p in val}
    assert split_pairs(list(reversed(pairs)), 0.3, seed=0)[1] == list(reversed(val))  # order-free


def test_pairs_longer_than_the_context_are_counted_not_cut(tokenizer: Tokenizer) -> None:
    pairs = [{"prompt": [{"role": "user", "content": "hi"}], "chosen": "apple " * n, "rejected": "no"}
             for n in (2, 200)]  # fmt: skip
    encoded, too_long = encode_pairs(tokenizer, pairs, seq_len=64)
    assert (len(encoded), too_long) == (1, 1)
    assert encoded.chosen[0][-1] == tokenizer.end_of_turn_id


def test_the_reward_model_learns_separable_preferences(trained: tuple[Path, dict], base_run: Path) -> None:
    out, summary = trained
    assert summary["val_pairs"] >= 8 and summary["train_pairs"] >= 20
    assert summary["val_accuracy_before"] < 0.7 and summary["val_accuracy_after"] >= 0.9
    assert summary["val_margin_after"] > summary["val_margin_before"] + 1
    assert (out / "loss.png").is_file() and "accuracy" in (out / "report.md").read_text()
    seed_everything(0)  # the run's seed: the same draws give the head the run started from
    initial = RewardModel(load_model(base_run))
    final = load_reward_model(out)
    for (name, before), (_, after) in zip(initial.named_parameters(), final.named_parameters(), strict=True):
        assert not torch.equal(before, after), f"{name} did not train"


def test_an_ensemble_pays_the_mean_of_its_members(tmp_path: Path) -> None:
    members = [_gated(likelihood=True)]
    torch.manual_seed(1)
    members.append(RewardModel(Transformer(CONFIG), likelihood=True).eval())
    ids, lengths, prompt_lengths = (
        torch.tensor([[5, 6, 7, 8, 0], [5, 9, 9, 8, 7]]),
        torch.tensor([4, 5]),
        torch.tensor([2, 1]),
    )
    with torch.no_grad():
        (a, terms_a), (b, terms_b) = (
            m.rewards_and_token_terms(ids, lengths, prompt_lengths) for m in members
        )
        rewards, terms = RewardEnsemble(members).rewards_and_token_terms(ids, lengths, prompt_lengths)
        assert not torch.allclose(a, b)  # two different models
        torch.testing.assert_close(rewards, (a + b) / 2)
        torch.testing.assert_close(terms, (terms_a + terms_b) / 2)
        runs = [tmp_path / "a", tmp_path / "b"]
        for model, run in zip(members, runs, strict=True):
            save_reward_model(model, run, extra_config={"reward": {"likelihood": True}})
        assert isinstance(load_reward_models(runs[:1]), RewardModel)
        torch.testing.assert_close(load_reward_models(runs)(ids, lengths, prompt_lengths), rewards)


def test_a_saved_reward_model_scores_as_before_saving(
    trained: tuple[Path, dict], tokenizer: Tokenizer
) -> None:
    out, _ = trained
    model = load_reward_model(out)
    body = load_model(out)  # the body is an ordinary model file (tied embeddings: no lm_head needed)
    assert torch.equal(body.model.norm.weight, model.body.model.norm.weight)
    items = [("tell me about the lamp.", "lamp ship thanks clock bread"),
             ("tell me about the lamp.", "lamp ship river clock bread")]  # fmt: skip
    good, bad = score_answers(model, tokenizer, items)
    assert good > bad
    assert score_answers(load_reward_model(out), tokenizer, items) == [good, bad]


def test_score_file_scores_answers_and_pairs(trained: tuple[Path, dict], prefs: Path, tmp_path: Path) -> None:
    out, _ = trained
    result = score_file(
        ScoreConfig(run=str(out), data=str(prefs), out=str(tmp_path / "scored.jsonl"), threads=1)
    )
    assert result["pairs"] == 40 and result["accuracy"] >= 0.9
    assert "chosen_score" in json.loads((tmp_path / "scored.jsonl").read_text().splitlines()[0])
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"prompt": "tell me about the ship.", "answer": "thanks tiger"}) + "\n")
    assert score_file(ScoreConfig(run=str(out), data=str(answers), threads=1))["answers"] == 1


def test_a_resumed_reward_run_ends_with_the_same_weights(base_run: Path, prefs: Path, tmp_path: Path) -> None:
    train_reward_model(_config(base_run, prefs, tmp_path / "straight", max_steps=4))
    train_reward_model(_config(base_run, prefs, tmp_path / "split", max_steps=2, checkpoint_every=2))
    train_reward_model(
        _config(base_run, prefs, tmp_path / "split", max_steps=4, checkpoint_every=2, resume=True)
    )
    straight, split = load_reward_model(tmp_path / "straight"), load_reward_model(tmp_path / "split")
    for (name, a), (_, b) in zip(straight.state_dict().items(), split.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_a_likelihood_reward_model_learns_trains_every_weight_and_round_trips(
    base_run: Path, prefs: Path, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    out = tmp_path / "likelihood"
    summary = train_reward_model(_config(base_run, prefs, out, likelihood=True))
    assert summary["val_accuracy_before"] < 0.7 and summary["val_accuracy_after"] >= 0.9
    assert json.loads((out / "config.json").read_text())["reward"]["likelihood"] is True
    seed_everything(0)
    initial = RewardModel(load_model(base_run), likelihood=True)
    final = load_reward_model(out)
    assert final.likelihood
    for (name, before), (_, after) in zip(initial.named_parameters(), final.named_parameters(), strict=True):
        assert not torch.equal(before, after), f"{name} did not train"
    items = [("tell me about the lamp.", "lamp ship thanks clock bread"),
             ("tell me about the lamp.", "lamp ship river clock bread")]  # fmt: skip
    good, bad = score_answers(final, tokenizer, items)
    assert good > bad and score_answers(load_reward_model(out), tokenizer, items) == [good, bad]


def test_a_head_file_without_the_gate_its_config_asks_for_is_refused(
    trained: tuple[Path, dict], tmp_path: Path
) -> None:
    out, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    config = json.loads((copy / "config.json").read_text())
    config["reward"]["likelihood"] = True
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="reward.likelihood"):
        load_reward_model(copy)
