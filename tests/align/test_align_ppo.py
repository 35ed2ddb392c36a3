"""PPO on a tiny random policy: the trainer moves every trainable weight and leaves the reference alone, a
reward that favours some tokens goes up, KL to the reference stays bounded, the adaptive controller
raises β above its target, answers that never end are penalised, and the run directory loads."""

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from forge.align.losses import token_logprobs
from forge.align.ppo import PpoConfig, RolloutBuffer, ppo, ppo_loss, rollout
from forge.align.ppo_rows import answer_ids, token_rewards
from forge.align.value_head import PolicyWithValue
from forge.errors import ConfigError
from forge.infer.batch import Completion
from forge.model.config import ModelConfig
from forge.model.io import load_model, save_model
from forge.model.transformer import Transformer
from forge.tokenizer.bpe import Tokenizer, TokenizerConfig, train_tokenizer
from forge.tokenizer.chat import render
from forge.tokenizer.special import SPECIAL_TOKENS
from forge.train.loop import TrainState, train
from forge.train.metrics import MetricsLog, read_metrics
from forge.train.optim import build_optimizer

QUESTIONS = ["what is two plus two?", "name a colour of the sky.", "what do cats say?", "say hello."]
CONFIG = ModelConfig(vocab_size=320, context_length=64, dim=48, num_layers=2, num_heads=4, num_kv_heads=2)
FAVOURED = 160  # the toy reward pays for every answer token with an id below this: half the vocabulary
KL_BOUND = (
    5.0  # nats per answer: the run with β = 0.5 stays under it (max 3.3), the one without β does not (8.9)
)


class FavouredTokens(nn.Module):
    """A reward model stand-in: +1 for each answer token (after the prompt) with id < FAVOURED."""

    def forward(self, ids: Tensor, lengths: Tensor, prompt_lengths: Tensor) -> Tensor:
        columns = torch.arange(ids.shape[1])
        answer = (columns >= prompt_lengths[:, None]) & (columns < lengths[:, None])  # (B, T)
        return ((ids < FAVOURED) & answer).sum(1).float()


class Zero(nn.Module):
    def forward(self, ids: Tensor, lengths: Tensor, prompt_lengths: Tensor) -> Tensor:
        return torch.zeros(len(ids))


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()  # one thread for these tiny models (and `ppo` sets threads=1)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_tokenizer(QUESTIONS * 30, TokenizerConfig(vocab_size=300))


@pytest.fixture(scope="module")
def policy_run(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> Path:
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("ppo") / "policy"
    save_model(Transformer(CONFIG), run)
    tokenizer.save(run / "tokenizer")
    prompts = run.parent / "prompts.jsonl"
    lines: list[dict[str, Any]] = [{"prompt": q} for q in QUESTIONS[:2]]  # both prompt formats
    lines += [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "x"}]}
        for q in QUESTIONS[2:]
    ]
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run


def _config(policy_run: Path, out: str, **overrides: object) -> PpoConfig:
    settings: dict = dict(policy=str(policy_run), prompts=str(policy_run.parent / "prompts.jsonl"),
                          out=str(policy_run.parent / out), rollout_batch=8, batch_size=4, ppo_epochs=2,
                          max_new_tokens=8, lr=5e-3, no_eos_penalty=0.0, device="cpu", threads=1,
                          progress=False, checkpoint_every=0)  # fmt: skip
    return PpoConfig(**(settings | overrides))


@pytest.fixture(scope="module")
def trained(policy_run: Path) -> Path:
    """A short PPO run against the favoured-tokens reward, β = 0.5: 16 rollouts of 8 answers, 64 updates.
    (The no-end penalty is off: a random policy never ends, and would learn only to stop.)"""
    ppo(_config(policy_run, "trained", max_steps=64, kl_coef=0.5), reward_model=FavouredTokens())
    return policy_run.parent / "trained"


def test_training_moves_every_weight_and_never_the_reference(policy_run: Path, tokenizer: Tokenizer) -> None:
    config = _config(policy_run, "components", max_steps=8)
    model = PolicyWithValue.from_policy(load_model(policy_run))
    reference = load_model(policy_run).eval().requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference_before = {k: v.clone() for k, v in reference.state_dict().items()}
    prompts = [
        render(tokenizer, [{"role": "user", "content": q}], add_generation_prompt=True)[0] for q in QUESTIONS
    ]

    def collect(iteration: int, kl_coef: float):  # noqa: ANN202
        return rollout(model, reference, FavouredTokens(), (prompts * 2)[:8], config, kl_coef=kl_coef,
                       iteration=iteration, tokenizer=tokenizer)  # fmt: skip

    from forge.align.losses import FixedKLController

    run_dir = policy_run.parent / "components"
    log = MetricsLog(run_dir / "rollouts.jsonl")
    buffer = RolloutBuffer(collect, FixedKLController(0.1), log, config, decode=tokenizer.decode)
    optimizer = build_optimizer(
        model, lr=config.lr, weight_decay=0.0, betas=(0.9, 0.95), device=torch.device("cpu")
    )
    state = train(model, optimizer, config, run_dir=run_dir, next_batch=buffer.next_batch, state=TrainState(),
                  data_state=buffer.state_dict, device=torch.device("cpu"), loss_fn=buffer.loss)  # fmt: skip
    buffer.finish()
    log.close()
    assert state.step == 8 and buffer.iteration == 2  # 8 updates = 2 rollouts of 2 epochs × 2 minibatches
    unchanged = [k for k, v in model.state_dict().items() if torch.equal(v, before[k])]
    assert not unchanged, f"PPO did not train {unchanged}"
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, reference_before[name]), f"the reference's {name} changed"
    assert not any(p.requires_grad for p in reference.parameters())


def test_reward_rises_and_the_run_directory_loads(trained: Path, policy_run: Path) -> None:
    records = read_metrics(trained / "rollouts.jsonl")
    assert len(records) == 16
    first, last = [r["score"] for r in records[:4]], [r["score"] for r in records[-4:]]
    assert sum(last) / 4 > sum(first) / 4 + 0.75, [round(r["score"], 2) for r in records]  # 3.6 → 5.0
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["score_after"] > summary["score_before"] + 0.75
    assert {"clip_fraction", "approx_kl", "entropy", "answer_length", "ended_fraction", "kl_coef"} <= set(
        records[0]
    )
    policy = load_model(trained)  # what `forge generate / chat / serve` load: the policy alone
    assert isinstance(policy, Transformer) and not isinstance(policy, PolicyWithValue)
    assert set(load_file(str(trained / "value_head.safetensors"))) == {"weight", "bias"}
    assert (trained / "report.md").is_file() and (trained / "loss.png").is_file()
    assert (
        Tokenizer.load(trained / "tokenizer").vocab_size
        == Tokenizer.load(summary["policy"] + "/tokenizer").vocab_size
    )


def test_kl_to_the_reference_stays_bounded(trained: Path, policy_run: Path) -> None:
    records = read_metrics(trained / "rollouts.jsonl")
    summary = json.loads((trained / "summary.json").read_text())
    assert records[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the first rollout is the reference's own
    assert 0 < summary["kl_max"] < KL_BOUND, [round(r["kl"], 2) for r in records]
    assert all(r["kl_coef"] == 0.5 for r in records)  # fixed β
    unchecked = ppo(_config(policy_run, "no-kl", max_steps=64, kl_coef=0.0), reward_model=FavouredTokens())
    assert unchecked["kl_max"] > KL_BOUND  # the same run without the penalty drifts past the bound


def test_adaptive_controller_raises_beta_above_target(policy_run: Path) -> None:
    config = _config(policy_run, "adaptive", max_steps=16, adaptive_kl=True, kl_target=1e-4, kl_horizon=16,
                     kl_estimator="k3")  # fmt: skip
    summary = ppo(config, reward_model=FavouredTokens())
    records = read_metrics(policy_run.parent / "adaptive" / "rollouts.jsonl")
    betas = [r["kl_coef"] for r in records] + [summary["kl_coef_final"]]
    assert betas[0] == 0.05 and len(records) == 4
    for record, beta, next_beta in zip(records, betas, betas[1:], strict=False):
        # the first rollout is the reference's own (KL 0: β falls), then k3 > 0 exceeds the tiny target
        factor = 1.1 if record["kl"] > 1e-4 else 0.9  # 1 ± 20% · 8 answers / horizon 16
        assert next_beta == pytest.approx(beta * factor), [round(r["kl"], 3) for r in records]
    assert summary["kl_coef_final"] == pytest.approx(0.05 * 0.9 * 1.1**3)


def test_answers_that_never_end_pay_the_penalty(policy_run: Path, tokenizer: Tokenizer) -> None:
    config = _config(policy_run, "unused", max_new_tokens=3, no_eos_penalty=-0.5)
    model = PolicyWithValue.from_policy(load_model(policy_run))
    prompts = [
        render(tokenizer, [{"role": "user", "content": q}], add_generation_prompt=True)[0] for q in QUESTIONS
    ]
    result = rollout(
        model, load_model(policy_run), Zero(), prompts, config, kl_coef=0.0, iteration=0, tokenizer=tokenizer
    )
    assert not result.ended.all()  # a random model rarely ends within 3 tokens
    assert torch.equal(result.scores, torch.zeros(4))
    assert result.stats["reward"] == pytest.approx(torch.where(result.ended, 0.0, -0.5).mean().item())
    assert result.stats["answer_length"] == 3  # the limit


def test_answers_to_one_prompt_are_paid_against_each_other(policy_run: Path, tokenizer: Tokenizer) -> None:
    config = _config(policy_run, "unused", samples_per_prompt=4, lam=1.0)
    model = PolicyWithValue.from_policy(load_model(policy_run))
    prompts = [
        render(tokenizer, [{"role": "user", "content": q}], add_generation_prompt=True)[0]
        for q in QUESTIONS[:2]
    ]
    rows = [p for p in prompts for _ in range(4)]  # as `ppo` lays out a rollout
    result = rollout(
        model, load_model(policy_run), FavouredTokens(), rows, config, kl_coef=0.0, iteration=0,
        tokenizer=tokenizer,
    )  # fmt: skip
    answers = {tuple(result.ids[i, int(result.prompt_lengths[i]) :].tolist()) for i in range(8)}
    assert len(answers) == 8  # one seed per row: four different answers to each prompt
    first = result.mask.int().argmax(1)  # each row's first answer token
    paid = result.returns[torch.arange(8), first]
    scores = result.scores.view(2, 4).tolist()
    expected = [
        s - (sum(group) - s) / 3 for group in scores for s in group
    ]  # by hand: minus the others' mean
    torch.testing.assert_close(
        paid, torch.tensor(expected)
    )  # with λ = 1 and no KL, the return is what is paid
    assert result.stats["reward"] == pytest.approx(0.0, abs=1e-5)  # each group's payments sum to zero
    summary = ppo(_config(policy_run, "grouped", max_steps=32, rollout_batch=2, samples_per_prompt=4,
                          kl_coef=0.1), reward_model=FavouredTokens())  # fmt: skip
    assert summary["score_after"] > summary["score_before"] + 0.75, summary  # 3.25 → 4.875
    report = (policy_run.parent / "grouped" / "report.md").read_text()
    assert summary["samples_per_prompt"] == 4 and summary["group_reward"] == "loo"
    assert "the prompt's other answers' mean" in report


def test_ranked_answers_are_paid_their_place_among_the_prompt_answers(
    policy_run: Path, tokenizer: Tokenizer
) -> None:
    config = _config(policy_run, "unused", samples_per_prompt=4, group_reward="rank", lam=1.0)
    model = PolicyWithValue.from_policy(load_model(policy_run))
    prompt = render(tokenizer, [{"role": "user", "content": QUESTIONS[0]}], add_generation_prompt=True)[0]
    result = rollout(
        model, load_model(policy_run), FavouredTokens(), [prompt] * 4, config, kl_coef=0.0, iteration=0,
        tokenizer=tokenizer,
    )  # fmt: skip
    scores = result.scores.tolist()
    # by hand: (answers scored below + half of the other answers scored the same) / 3 − 0.5
    expected = [
        (sum(o < s for o in scores) + (sum(o == s for o in scores) - 1) / 2) / 3 - 0.5 for s in scores
    ]
    paid = result.returns[torch.arange(4), result.mask.int().argmax(1)]  # λ = 1, no KL: what is paid
    torch.testing.assert_close(paid, torch.tensor(expected))
    summary = ppo(_config(policy_run, "ranked", max_steps=32, rollout_batch=2, samples_per_prompt=4,
                          group_reward="rank", kl_coef=0.01), reward_model=FavouredTokens())  # fmt: skip
    assert summary["score_after"] > summary["score_before"] + 0.75, summary
    report = (policy_run.parent / "ranked" / "report.md").read_text()
    assert summary["group_reward"] == "rank" and "rank of (score + no-end penalty)" in report
    with pytest.raises(ConfigError, match="--group-reward must be one of loo, rank"):
        _config(policy_run, "x", group_reward="mean")


def test_log_probabilities_are_those_of_the_temperature_sampled_at(
    policy_run: Path, tokenizer: Tokenizer
) -> None:
    config = _config(policy_run, "unused", temperature=0.5, max_new_tokens=6)
    policy = load_model(policy_run)
    model = PolicyWithValue.from_policy(policy)
    prompts = [
        render(tokenizer, [{"role": "user", "content": q}], add_generation_prompt=True)[0] for q in QUESTIONS
    ]
    result = rollout(
        model, load_model(policy_run), Zero(), prompts, config, kl_coef=0.0, iteration=0, tokenizer=tokenizer
    )
    inputs, targets, mask = result.ids[:, :-1], result.ids[:, 1:], result.mask
    with torch.no_grad():
        logits = policy(inputs)
    tempered, plain = token_logprobs(logits / 0.5, targets), token_logprobs(logits, targets)
    torch.testing.assert_close(result.logprobs[mask], tempered[mask])  # what the answers were drawn from
    assert not torch.allclose(result.logprobs[mask], plain[mask], atol=1e-3)
    assert result.stats["kl"] == pytest.approx(0.0, abs=1e-5)  # reference = policy, both at 0.5
    _, stats = ppo_loss(model, inputs, targets, mask, result.logprobs, result.values, result.advantages,
                        result.returns, config=config)  # fmt: skip
    assert stats["approx_kl"] == pytest.approx(0.0, abs=1e-6)  # before any update the ratio is 1
    assert stats["clip_fraction"] == 0.0


def test_answer_ids_keep_the_ending_token() -> None:
    end_of_turn, end_of_text = SPECIAL_TOKENS.index("<|end|>"), SPECIAL_TOKENS.index("<|endoftext|>")

    def answer(ids: list[int], reason: str) -> tuple[list[int], bool]:
        completion = Completion(request=0, sample=0, seed=0, token_ids=ids, finish_reason=reason)
        return answer_ids(completion, end_of_turn=end_of_turn, end_of_text=end_of_text)

    assert answer([20, 21], "stop") == ([20, 21, end_of_turn], True)
    assert answer([20, 21], "length") == ([20, 21], False)
    assert answer([20, end_of_text, 22], "length") == ([20, end_of_text], True)  # as if it had stopped there


def test_token_rewards_put_the_score_on_the_last_answer_token() -> None:
    mask = torch.tensor([[False, True, True, False], [True, True, True, True]])
    kl = torch.tensor([[9.0, 1.0, 2.0, 9.0], [1.0, 1.0, 1.0, 1.0]])
    rewards = token_rewards(torch.tensor([5.0, -1.0]), kl, mask, kl_coef=0.5)
    assert rewards.tolist() == [[0.0, -0.5, 4.0, 0.0], [-0.5, -0.5, -0.5, -1.5]]


def test_token_rewards_credit_the_part_of_a_score_earned_on_a_token_there() -> None:
    mask = torch.tensor([[False, True, True, False], [True, True, True, True]])
    kl = torch.tensor([[9.0, 1.0, 2.0, 9.0], [1.0, 1.0, 1.0, 1.0]])
    earned = torch.tensor([[7.0, -2.0, -1.0, 7.0], [-1.0, 0.0, -3.0, 0.0]])  # outside the answer: ignored
    rewards = token_rewards(torch.tensor([5.0, -1.0]), kl, mask, kl_coef=0.5, earned=earned)
    # row 0: the score 5 is -3 earned on the answer's tokens, 8 on its last; row 1: -4 earned, 3 on the last
    assert rewards.tolist() == [[0.0, -2.5, 6.0, 0.0], [-1.5, -0.5, -3.5, 2.5]]
    assert rewards.sum(1).tolist() == [5.0 - 0.5 * 3, -1.0 - 0.5 * 4]  # the same total as without `earned`


def test_config_names_the_bad_flag(policy_run: Path) -> None:
    with pytest.raises(ConfigError, match="--rollout-batch"):
        _config(policy_run, "x", rollout_batch=2, batch_size=4)
    with pytest.raises(ConfigError, match="--kl-estimator"):
        _config(policy_run, "x", kl_estimator="k2")
    with pytest.raises(ConfigError, match="--kl-coef"):
        _config(policy_run, "x", kl_coef=0.0, adaptive_kl=True)
    with pytest.raises(ConfigError, match="--samples-per-prompt"):
        _config(policy_run, "x", samples_per_prompt=0)
    _config(policy_run, "x", rollout_batch=2, batch_size=4, samples_per_prompt=2)  # 4 answers: enough
    with pytest.raises(ConfigError, match="--reward .*missing: no such directory"):
        ppo(_config(policy_run, "x", reward=f"{policy_run},{policy_run.parent / 'missing'}"))


def test_cli_help(capsys: pytest.CaptureFixture) -> None:
    from forge.cli.ppo import register

    parser = argparse.ArgumentParser(prog="forge")
    register(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["ppo", "--help"])
    text = capsys.readouterr().out
    assert (
        "POLICY_RUN" in text and "--reward" in text and "--kl-estimator" in text and "--seq-len" not in text
    )


@pytest.mark.parametrize(("likelihood", "members"), [(False, 1), (True, 1), (True, 2)])
def test_cli_trains_against_a_saved_reward_model(
    policy_run: Path, tokenizer: Tokenizer, likelihood: bool, members: int
) -> None:
    from forge.align.reward import RewardModel, save_reward_model
    from forge.cli.ppo import register

    reward_runs = [policy_run.parent / f"reward-{likelihood}-{i}" for i in range(members)]
    for reward_run in reward_runs:  # several: an ensemble
        model = RewardModel(Transformer(CONFIG), likelihood=likelihood)
        save_reward_model(model, reward_run, extra_config={"reward": {"likelihood": likelihood}})
        tokenizer.save(reward_run / "tokenizer")
    reward = ",".join(str(run) for run in reward_runs)
    parser = argparse.ArgumentParser(prog="forge")
    register(parser.add_subparsers())
    out = policy_run.parent / f"cli-{likelihood}-{members}"
    prompts = str(policy_run.parent / "prompts.jsonl")
    flags = {"--reward": reward, "--prompts": prompts, "--out": str(out), "--max-steps": "2",
             "--rollout-batch": "4", "--batch-size": "2", "--ppo-epochs": "1", "--max-new-tokens": "4",
             "--device": "cpu", "--threads": "1"}  # fmt: skip
    args = parser.parse_args(
        ["ppo", str(policy_run), *(x for pair in flags.items() for x in pair), "--no-progress"]
    )
    args.handler(args)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["reward"] == ",".join(str(run.resolve()) for run in reward_runs)
    assert load_model(out).config == CONFIG


def test_lora_trains_adapters_and_value_head_only(policy_run: Path) -> None:
    config = _config(policy_run, "lora", max_steps=4, lora=True)
    summary = ppo(config, reward_model=FavouredTokens())
    assert 0 < summary["trainable_fraction"] < 0.5
    base, tuned = load_model(policy_run).state_dict(), load_model(policy_run.parent / "lora").state_dict()
    changed = {name for name in base if not torch.equal(base[name], tuned[name])}
    adapted = ("q_proj.weight", "v_proj.weight", "embed_tokens.weight", "lm_head.weight")
    assert changed and all(name.endswith(adapted) for name in changed), changed
    moved = (base["model.embed_tokens.weight"] != tuned["model.embed_tokens.weight"]).any(dim=1)
    assert set(moved.nonzero().flatten().tolist()) <= set(range(len(SPECIAL_TOKENS)))  # special rows only
    assert load_file(str(policy_run.parent / "lora" / "value_head.safetensors"))["weight"].abs().sum() > 0


def test_resume_continues_with_a_fresh_rollout(policy_run: Path) -> None:
    ppo(_config(policy_run, "resumed", max_steps=4), reward_model=FavouredTokens())
    summary = ppo(_config(policy_run, "resumed", max_steps=8, resume=True), reward_model=FavouredTokens())
    records = read_metrics(policy_run.parent / "resumed" / "rollouts.jsonl")
    assert summary["steps"] == 8
    assert [(r["iteration"], r["step"]) for r in records] == [(0, 4), (1, 8)]
