"""`forge ppo POLICY_RUN --reward REWARD_RUN --prompts prompts.jsonl`: RLHF with PPO, through the one
training loop (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences"; Ouyang et al.
2022, InstructGPT, section 3.5; the implementation details of Huang et al. 2024, "The N+ Implementation
Details of RLHF with PPO").

    load policy (+ value head), frozen reference, reward model, prompts
    repeat:  rollout  = sample answers with the batch engine → score them → old log-probs, values and
                        reference log-probs in one forward each → per-token rewards → GAE → whiten
             updates  = `ppo_epochs` shuffled passes of minibatches: clipped policy loss + vf_coef · clipped
                        value loss (one loop step per minibatch)
             β        ← KL controller (fixed, or adaptive towards `kl_target`)
    → one more rollout of the trained policy, measured → run directory

Design choices:
- the trained module is `PolicyWithValue` (`forge.align.value_head`): the policy plus a linear value head
  on its final hidden states, a shared body as in TRL's `AutoModelForCausalLMWithValueHead`: one forward
  gives log-probabilities and values, and no second network is held or trained; `vf_coef` 0.1 keeps the
  value loss from pulling the policy's body around. (InstructGPT's separate value model, initialised from
  the reward model, is the better critic at scale, for twice the trained weights.);
- the loop is reused unchanged: `next_batch()` serves minibatches of the current rollout (inputs, targets,
  mask, old log-probs, old values, advantages, returns: (B, T), aligned with the targets) and collects a
  fresh rollout after `ppo_epochs` passes. One loop step is one minibatch update: `--max-steps` counts
  updates, ppo_epochs · ⌈rollout_batch / batch_size⌉ per rollout;
- sampling (`generate_batch`) is at temperature 1 without truncation by default, so PPO's log-probabilities
  are those the answers were drawn from; answer i of rollout k has a seed made of (seed, k, i). Another
  temperature divides the logits everywhere; a top-p < 1 makes PPO slightly off-policy;
- an answer ends with end-of-turn or end-of-text, and that token is part of it, so stopping is credited;
  one that reaches `max_new_tokens` without ending gets `no_eos_penalty` added to its score;
- per-token reward: −β · KL_t (k1 or k3) on every answer token plus the score on the last (Ziegler et al.
  2019, eq. 2); with `samples_per_prompt` k > 1 each prompt is answered k times in the rollout and every
  score is paid minus the mean of its prompt's k − 1 other scores (`leave_one_out`, as in RLOO, Ahmadian
  et al. 2024): how easy the prompt is cancels, which otherwise only the value head (a linear layer on
  the policy's last hidden states) can take out, and the policy is pushed along what tells one answer
  to a prompt from another. `group_reward` "rank" pays each answer its rank among its prompt's answers
  instead (`centered_ranks`, −0.5 … 0.5): a gap the reward model overrates buys no more than a small
  one. Advantages by GAE over the answer tokens, whitened per rollout. A reward model with a likelihood
  term (`forge reward train --likelihood`) has its per-token terms credited on their tokens and only the
  rest on the last (ranked, the whole payment is on the last): paid all at the end, a sum over the
  answer's tokens made stopping look costly next to the value head's guess, and answers grew longer as
  the score fell;
- logs: the PPO loss in `metrics.jsonl` (the loop's); one record per rollout in `rollouts.jsonl` (mean
  score, reward, KL, entropy, answer length, fraction ended, β, clip fractions, value loss, two answers).
  The summary's "before" is the first rollout, "after" one more rollout of the trained policy;
- the run directory loads like an SFT run (the policy alone in `model.safetensors`, LoRA merged) for
  `forge generate`, `chat` and `serve`; the value head is beside it (`value_head.safetensors`).
  `--resume` starts a fresh rollout from the newest checkpoint, with the saved β.
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from forge.align.formats import read_prompts
from forge.align.losses import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    centered_ranks,
    entropy_from_logits,
    gae,
    kl_penalty,
    leave_one_out,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    token_logprobs,
    whiten,
)
from forge.align.ppo_report import before_and_after, plot_ppo, ppo_report
from forge.align.ppo_rows import answer_ids, pad_rows, prompt_indices, sample_seed, token_rewards
from forge.align.reward import RewardEnsemble, RewardModel, load_reward_models
from forge.align.value_head import PolicyWithValue
from forge.config import to_dict
from forge.errors import ConfigError, DataError
from forge.infer.batch import generate_batch
from forge.infer.sampling import SamplingConfig
from forge.io import write_json, write_text
from forge.model.io import load_model, save_model
from forge.model.lora import LoraConfig, apply_lora, merge_lora, trainable_fraction
from forge.model.transformer import Transformer
from forge.tokenizer.bpe import Tokenizer
from forge.tokenizer.chat import render
from forge.tokenizer.special import SPECIAL_TOKENS
from forge.train.loop import Batch, TrainConfig, TrainState, open_run, start_or_resume, train
from forge.train.metrics import MetricsLog, read_metrics
from forge.train.optim import build_optimizer
from forge.train.precision import autocast

GROUP_REWARDS = {"loo": leave_one_out, "rank": centered_ranks}  # --group-reward: what an answer is paid


@dataclass(frozen=True, kw_only=True)
class PpoConfig(TrainConfig):
    """PPO: the training-loop options plus the policy, reward model, prompts and PPO's own settings."""

    policy: str = ""
    """run directory of the policy to train (written by `forge sft`)"""
    reward: str = ""
    """run directory of the reward model that scores the answers (written by `forge reward`), or several
    separated by commas, whose mean score is paid (an ensemble)"""
    reference: str = ""
    """run directory of the frozen reference model of the KL penalty (empty: the policy's run)"""
    prompts: str = ""
    """prompts: JSONL of {"messages": [...]} (a last assistant turn is dropped) or {"prompt": str}"""
    out: str = "runs/ppo"
    """run directory to write"""
    resume: bool = False
    """continue the run in --out from its newest valid checkpoint (with a fresh rollout)"""
    rollout_batch: int = 32
    """prompts answered per rollout"""
    samples_per_prompt: int = 1
    """answers sampled per prompt of a rollout; above 1, each answer is paid against its prompt's other
    answers, as --group-reward says"""
    group_reward: str = "loo"
    """with --samples-per-prompt above 1: loo (the score less the mean of the prompt's other answers, the
    leave-one-out baseline of RLOO) or rank (the answer's rank among them, from −0.5 to 0.5: only the
    order counts, not by how much the reward model prefers one answer)"""
    batch_size: int = 8
    """answers per PPO minibatch: one loop step (optimizer step with --grad-accum 1) each"""
    ppo_epochs: int = 2
    """passes over each rollout's answers, in shuffled minibatches"""
    max_new_tokens: int = 96
    """longest answer sampled; prompts that leave no room for it in the context are left out"""
    temperature: float = 1.0
    """sampling temperature; the log-probabilities, the KL to the reference and the updates all divide
    the logits by it, so what is trained is the policy as sampled at it (e.g. the temperature it serves at)"""
    top_p: float = 1.0
    """nucleus sampling (1 = off; below 1 the samples are no longer exactly the policy's)"""
    kl_coef: float = 0.05
    """β of the per-token penalty −β·KL(policy ‖ reference); the start value with --adaptive-kl"""
    kl_estimator: str = "k1"
    """per-token KL estimator: k1 (log π − log π_ref) or k3 ((r − 1) − log r, never negative)"""
    adaptive_kl: bool = False
    """steer β towards --kl-target (Ziegler et al. 2019) instead of keeping it fixed"""
    kl_target: float = 6.0
    """with --adaptive-kl: the KL per answer (nats, summed over its tokens) that β aims at"""
    kl_horizon: int = 10000
    """with --adaptive-kl: answers over which β may change by up to 20%"""
    gamma: float = 1.0
    """discount of GAE"""
    lam: float = 0.95
    """λ of GAE (1 = Monte-Carlo returns, 0 = one-step TD)"""
    clip: float = 0.2
    """clip range of the policy ratio"""
    value_clip: float = 0.2
    """clip range of the value update"""
    vf_coef: float = 0.1
    """weight of the value loss in the total loss"""
    no_eos_penalty: float = -1.0
    """added to the score of an answer that reached --max-new-tokens without ending (0 = off)"""
    whiten_advantages: bool = True
    """normalise the advantages of each rollout to mean 0, variance 1"""
    lora: bool = False
    """train LoRA adapters (--adapter.*) and the value head instead of every weight"""
    adapter: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapter shape, with --lora"""
    max_steps: int = 64
    """PPO minibatch updates to run (ppo_epochs · rollout_batch · samples_per_prompt / batch_size per
    rollout)"""
    lr: float = 1e-5
    """learning rate (constant after warm-up unless --min-lr-ratio < 1)"""
    min_lr_ratio: float = 1.0
    """final learning rate as a fraction of the peak (1 = constant, as usual for PPO)"""
    warmup_steps: int = 0
    """steps of linear learning-rate warm-up"""
    weight_decay: float = 0.0
    """AdamW weight decay (0: decay would pull the policy away from the reference)"""
    log_every: int = 8
    """log the PPO loss every N steps"""

    @property
    def reward_runs(self) -> list[str]:
        """The run directories of --reward (several: an ensemble)."""
        return [run.strip() for run in self.reward.split(",") if run.strip()]

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.policy or not self.prompts:
            raise ConfigError("give the policy and prompts: forge ppo POLICY_RUN --reward RUN --prompts FILE")
        beta_ok = self.kl_coef > 0 or (self.kl_coef == 0 and not self.adaptive_kl)
        checks = {  # flag: (valid, what it must be)
            "rollout_batch": (
                self.rollout_batch * self.samples_per_prompt >= self.batch_size,
                "at least --batch-size / --samples-per-prompt",
            ),
            "samples_per_prompt": (self.samples_per_prompt >= 1, "at least 1"),
            "group_reward": (self.group_reward in GROUP_REWARDS, f"one of {', '.join(GROUP_REWARDS)}"),
            "ppo_epochs": (self.ppo_epochs >= 1, "at least 1"),
            "max_new_tokens": (self.max_new_tokens >= 1, "at least 1"),
            "temperature": (0 < self.temperature <= 2, "in (0, 2]"),
            "top_p": (0 < self.top_p <= 1, "in (0, 1]"),
            "kl_coef": (beta_ok, ">= 0 (> 0 with --adaptive-kl)"),
            "kl_estimator": (self.kl_estimator in KL_ESTIMATORS, f"one of {', '.join(KL_ESTIMATORS)}"),
            "kl_target": (self.kl_target > 0, "> 0"),
            "kl_horizon": (self.kl_horizon >= 1, "at least 1"),
            "gamma": (0 <= self.gamma <= 1, "in [0, 1]"),
            "lam": (0 <= self.lam <= 1, "in [0, 1]"),
            "clip": (self.clip > 0, "> 0"),
            "value_clip": (self.value_clip > 0, "> 0"),
            "vf_coef": (self.vf_coef >= 0, ">= 0"),
        }  # fmt: skip
        for name, (valid, expected) in checks.items():
            if not valid:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be {expected}, got {getattr(self, name)!r}"
                )


# ----------------------------------------------------------------------------- rollouts


@dataclass
class Rollout:
    """Sampled answers and what the updates need. Rows are prompt + answer, right-padded; the (N, T)
    tensors are aligned with `targets`, so column t holds the quantities of the token targets[:, t]."""

    ids: Tensor  # (N, T + 1) prompt + answer, right-padded
    prompt_lengths: Tensor  # (N,)
    lengths: Tensor  # (N,) prompt + answer tokens
    mask: Tensor  # (N, T) bool: targets that are answer tokens
    logprobs: Tensor  # (N, T) log π_old(target)
    values: Tensor  # (N, T) V_old before each target
    advantages: Tensor  # (N, T)
    returns: Tensor  # (N, T)
    scores: Tensor  # (N,) the reward model's scores
    ended: Tensor  # (N,) bool: the answer ended (end-of-turn or end-of-text) before the limit
    stats: dict[str, float]

    @property
    def inputs(self) -> Tensor:
        return self.ids[:, :-1]  # (N, T) the ids fed to the model

    @property
    def targets(self) -> Tensor:
        return self.ids[:, 1:]  # (N, T) the next ids

    def sample(self, i: int, decode: Callable[[list[int]], str]) -> dict[str, Any]:
        """Row `i` as text, for the logs."""
        start, end = int(self.prompt_lengths[i]), int(self.lengths[i])
        text = {
            "prompt": decode(self.ids[i, :start].tolist()),
            "answer": decode(self.ids[i, start:end].tolist()),
        }
        return text | {"score": self.scores[i].item(), "ended": bool(self.ended[i])}


@torch.no_grad()
def rollout(
    model: PolicyWithValue, reference: Transformer, reward_model: nn.Module, prompts: Sequence[list[int]],
    config: PpoConfig, *, kl_coef: float, iteration: int, tokenizer: Tokenizer,
) -> Rollout:  # fmt: skip
    """Sample one answer per row of `prompts` (k consecutive copies of a prompt with `samples_per_prompt` k),
    score them, and compute old log-probs, values, rewards and advantages."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sampling = [
        SamplingConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                       top_p=config.top_p, seed=sample_seed(config.seed, iteration, i))
        for i in range(len(prompts))
    ]  # fmt: skip
    completions = generate_batch(model, prompts, sampling, eos_ids=(tokenizer.end_of_turn_id,), device=device)
    answers = [
        answer_ids(c, end_of_turn=tokenizer.end_of_turn_id, end_of_text=tokenizer.eos_id) for c in completions
    ]
    ids, prompt_lengths, lengths, mask = pad_rows(prompts, [a for a, _ in answers], tokenizer.pad_id, device)
    inputs, targets = ids[:, :-1], ids[:, 1:]  # (N, T)

    parts = []
    for chunk in torch.arange(len(ids), device=device).split(config.batch_size):  # bounded memory
        with autocast(device, config.autocast_dtype):
            logits, values = model.forward_with_values(inputs[chunk])
            ref_logits = reference(inputs[chunk]).float() / config.temperature
            if isinstance(reward_model, RewardModel | RewardEnsemble):  # likelihood terms: token by token
                scores, earned = reward_model.rewards_and_token_terms(
                    ids[chunk], lengths[chunk], prompt_lengths[chunk]
                )
            else:
                scores = reward_model(ids[chunk], lengths[chunk], prompt_lengths[chunk])
                earned = torch.zeros(targets[chunk].shape, device=device)
        logits = logits / config.temperature
        logprobs = token_logprobs(logits, targets[chunk])
        ref_logprobs = token_logprobs(ref_logits, targets[chunk])
        parts.append(
            (logprobs, values, ref_logprobs, entropy_from_logits(logits), scores.float(), earned.float())
        )
    logprobs, values, ref_logprobs, entropy, scores, earned = (
        torch.cat(part) for part in zip(*parts, strict=True)
    )
    model.train(was_training)

    ended = torch.tensor([e for _, e in answers], device=device)
    kl = torch.where(mask, kl_penalty(logprobs, ref_logprobs, config.kl_estimator), 0.0)  # (N, T)
    paid = scores + config.no_eos_penalty * (~ended).float()
    if config.samples_per_prompt > 1:  # rows come in groups of one prompt's answers
        paid = GROUP_REWARDS[config.group_reward](paid, config.samples_per_prompt)
    ranked = config.samples_per_prompt > 1 and config.group_reward == "rank"  # the rank is all that is paid
    rewards = token_rewards(paid, kl, mask, kl_coef=kl_coef, earned=None if ranked else earned)
    advantages, returns = gae(rewards, values, mask, gamma=config.gamma, lam=config.lam)
    if config.whiten_advantages:
        advantages = whiten(advantages, mask)
    stats = {
        "score": scores.mean().item(),
        "reward": rewards.sum(1).mean().item(),
        "kl": kl.sum(1).mean().item(),
        "entropy": masked_mean(entropy, mask).item(),
        "answer_length": mask.sum(1).float().mean().item(),
        "ended_fraction": ended.float().mean().item(),
        "kl_coef": kl_coef,
    }
    return Rollout(
        ids, prompt_lengths, lengths, mask, logprobs, values, advantages, returns, scores, ended, stats
    )


# ----------------------------------------------------------------------------- updates


def ppo_loss(
    model: PolicyWithValue, inputs: Tensor, targets: Tensor, mask: Tensor, old_logprobs: Tensor,
    old_values: Tensor, advantages: Tensor, returns: Tensor, *, config: PpoConfig,
) -> tuple[Tensor, dict[str, float]]:  # fmt: skip
    """Clipped policy loss (Schulman et al. 2017, eq. 7) + vf_coef · clipped value loss over answer tokens."""
    logits, values = model.forward_with_values(inputs)  # (B, T, V), (B, T)
    logprobs = token_logprobs(logits / config.temperature, targets)
    policy_loss, policy_stats = ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip=config.clip)
    value_loss, value_stats = ppo_value_loss(values, old_values, returns, mask, clip=config.value_clip)
    stats = {"policy_loss": policy_loss.item(), "value_loss": value_loss.item()} | policy_stats | value_stats
    return policy_loss + config.vf_coef * value_loss, stats


class RolloutBuffer:
    """PPO's data side for the loop: serves minibatches of the current rollout for `ppo_epochs` shuffled
    passes, then collects the next rollout; owns β's controller and writes `rollouts.jsonl`."""

    def __init__(
        self, collect: Callable[[int, float], Rollout], controller: AdaptiveKLController | FixedKLController,
        log: MetricsLog, config: PpoConfig, *, decode: Callable[[list[int]], str], iteration: int = 0,
        served: int = 0,
    ) -> None:  # fmt: skip
        self.collect, self.controller, self.log = collect, controller, log
        self.config, self.decode = config, decode
        self.iteration, self.served = iteration, served  # the next rollout; micro-batches served so far
        self.current: Rollout | None = None
        self.queue: list[Tensor] = []  # row indices of the minibatches left on the current rollout
        self.updates: list[dict[str, float]] = []

    def next_batch(self) -> Batch:
        """The next minibatch: (inputs, targets, mask, old log-probs, old values, advantages, returns)."""
        if self.current is None or not self.queue:
            self.finish()
            self.current = self.collect(self.iteration, self.controller.value)
            self.controller.update(self.current.stats["kl"], n_steps=len(self.current.lengths))
            order = torch.Generator().manual_seed(sample_seed(self.config.seed, self.iteration, -1))
            n = len(self.current.lengths)
            self.queue = [
                rows
                for _ in range(self.config.ppo_epochs)
                for rows in torch.randperm(n, generator=order).split(self.config.batch_size)
            ]
        r = self.current
        rows = self.queue.pop(0).to(r.lengths.device)
        self.served += 1
        width = int(r.lengths[rows].max()) - 1  # the columns after are padding in every row
        tensors = (r.inputs, r.targets, r.mask, r.logprobs, r.values, r.advantages, r.returns)
        return tuple(t[rows, :width] for t in tensors)

    def loss(self, model: PolicyWithValue, *batch: Tensor) -> Tensor:
        """The loop's `loss_fn`: `ppo_loss`, its statistics kept for the rollout's record."""
        loss, stats = ppo_loss(model, *batch, config=self.config)
        self.updates.append(stats)
        return loss

    def finish(self) -> dict[str, Any] | None:
        """Log the current rollout with the mean statistics of its updates (once it has some)."""
        if self.current is None or not self.updates:
            return None
        record: dict[str, Any] = {"step": self.served // self.config.grad_accum, "iteration": self.iteration}
        record |= self.current.stats
        record |= {k: sum(u[k] for u in self.updates) / len(self.updates) for k in self.updates[0]}
        record["samples"] = [
            self.current.sample(i, self.decode) for i in range(min(2, len(self.current.lengths)))
        ]
        self.log.log(record)
        self.current, self.updates, self.iteration = None, [], self.iteration + 1
        return record

    def state_dict(self) -> dict[str, Any]:
        """What a resume needs: the next rollout (a partly used one is not resumed) and β."""
        return {"iteration": self.iteration + (self.current is not None), "kl_coef": self.controller.value}


# ----------------------------------------------------------------------------- the run


def encode_prompts(
    tokenizer: Tokenizer, conversations: Sequence[list[dict[str, str]]], *, max_tokens: int
) -> tuple[list[list[int]], int]:
    """Render each conversation with the generation prompt; keep those of at most `max_tokens` tokens.
    Returns the kept ids and how many were left out."""
    encoded = [render(tokenizer, messages, add_generation_prompt=True)[0] for messages in conversations]
    kept = [ids for ids in encoded if len(ids) <= max_tokens]
    return kept, len(encoded) - len(kept)


def _check_tokenizer(policy: str, other: str, flag: str) -> None:
    mine, theirs = (Path(run) / "tokenizer" / "tokenizer.json" for run in (policy, other))
    if mine.is_file() and theirs.is_file() and mine.read_bytes() != theirs.read_bytes():
        raise ConfigError(f"{flag} {other} has another tokenizer than the policy {policy}; PPO needs one")


def _load_models(
    config: PpoConfig, reward_model: nn.Module | None, device: torch.device
) -> tuple[PolicyWithValue, Transformer, nn.Module]:
    """The trained policy with its value head, the frozen reference, the frozen reward model."""
    policy = load_model(config.policy, device=device)
    model = PolicyWithValue.from_policy(policy)
    del policy
    reference_run = config.reference or config.policy
    _check_tokenizer(config.policy, reference_run, "--reference")
    reference = load_model(reference_run, device=device)
    if reference.config.vocab_size != model.config.vocab_size:
        raise ConfigError(f"--reference {reference_run}: its vocabulary differs from the policy's")
    if reward_model is None:
        if not config.reward_runs:
            raise ConfigError("give the reward model: --reward REWARD_RUN (written by `forge reward`)")
        for run in config.reward_runs:
            if not Path(run).is_dir():
                raise ConfigError(f"--reward {run}: no such directory; give run directories written by "
                                  "`forge reward train`, separated by commas")  # fmt: skip
            _check_tokenizer(config.policy, run, "--reward")
        reward_model = load_reward_models(config.reward_runs, device=device)
    reward_model = reward_model.to(device).eval().requires_grad_(False)
    return model, reference.eval().requires_grad_(False), reward_model


def ppo(config: PpoConfig, *, reward_model: nn.Module | None = None) -> dict[str, Any]:
    """Train the policy with PPO as configured; return the summary (also `summary.json` in the run).

    `reward_model`, any module mapping right-padded ids (B, T), lengths (B,) and prompt lengths (B,) to
    scores (B,), replaces `--reward` (a rule-based reward, a test's stand-in).
    """
    started = time.perf_counter()
    run_dir, device, threads = open_run(config, config.out, resume=config.resume)
    model, reference, reward_model = _load_models(config, reward_model, device)
    tokenizer = Tokenizer.load(Path(config.policy) / "tokenizer")
    room = model.config.context_length - config.max_new_tokens
    if room < 1:
        raise ConfigError(f"--max-new-tokens {config.max_new_tokens} fills the model's context of "
                          f"{model.config.context_length} tokens; leave room for the prompts")  # fmt: skip
    prompts, too_long = encode_prompts(tokenizer, read_prompts(config.prompts), max_tokens=room)
    if not prompts:
        raise DataError(
            f"{config.prompts}: no prompt fits in the {room} tokens of context --max-new-tokens leaves"
        )
    model.activation_checkpointing = config.activation_checkpointing
    if config.lora:
        apply_lora(model, config.adapter, token_ids=range(len(SPECIAL_TOKENS)))
        model.value_head.requires_grad_(True)
    optimizer = build_optimizer(model, lr=config.lr, weight_decay=config.weight_decay,
                                betas=(config.beta1, config.beta2), device=device,
                                lr_scales=config.adapter.lr_scales if config.lora else None)  # fmt: skip
    controller: AdaptiveKLController | FixedKLController = (
        AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
        if config.adaptive_kl
        else FixedKLController(config.kl_coef)
    )
    state, iteration = _start(config, run_dir, model, optimizer, controller, tokenizer)

    def collect(iteration: int, kl_coef: float) -> Rollout:
        chosen = prompt_indices(len(prompts), config.rollout_batch, iteration, config.seed)
        rows = [prompts[i] for i in chosen for _ in range(config.samples_per_prompt)]
        return rollout(model, reference, reward_model, rows, config,
                       kl_coef=kl_coef, iteration=iteration, tokenizer=tokenizer)  # fmt: skip

    log = MetricsLog(run_dir / "rollouts.jsonl", truncate_after_step=state.step)
    buffer = RolloutBuffer(collect, controller, log, config, decode=tokenizer.decode, iteration=iteration,
                           served=state.step * config.grad_accum)  # fmt: skip
    k = config.samples_per_prompt
    grouped = f" ({config.rollout_batch} prompts × {k})" * (k > 1)
    print(f"ppo: {len(prompts):,} prompts ({too_long:,} too long for the context left out), "
          f"{config.rollout_batch * k} answers per rollout{grouped}, {config.ppo_epochs} passes in "
          f"minibatches of {config.batch_size}, β {controller.value:g}"
          + " (adaptive)" * config.adaptive_kl)  # fmt: skip
    try:
        state = train(model, optimizer, config, run_dir=run_dir, next_batch=buffer.next_batch, state=state,
                      data_state=buffer.state_dict, device=device, loss_fn=buffer.loss)  # fmt: skip
        buffer.finish()
    finally:
        log.close()
    if state.interrupted:
        return {"interrupted": True, "step": state.step}
    after = collect(buffer.iteration, controller.value)  # the trained policy, on the next prompts
    summary = _summary(config, state, read_metrics(run_dir / "rollouts.jsonl"), after.stats,
                       fraction=trainable_fraction(model), prompts=(len(prompts), too_long))  # fmt: skip
    summary["samples_after"] = [after.sample(i, tokenizer.decode) for i in range(min(3, len(after.lengths)))]
    _save(model, run_dir, config)
    summary |= {"wall_minutes": round((time.perf_counter() - started) / 60, 3), "threads": threads}
    write_json(run_dir / "summary.json", summary)
    plot_ppo(run_dir, group_reward=summary["group_reward"])
    write_text(run_dir / "report.md", ppo_report(run_dir, summary))
    print(f"score {summary['score_before']:.3f} → {summary['score_after']:.3f}, "
          f"KL to the reference {summary['kl_after']:.3f} nats per answer → {run_dir}")  # fmt: skip
    return summary


class _Resumed:
    """Receives a checkpoint's data state: the next rollout's number and β."""

    def __init__(self) -> None:
        self.iteration, self.kl_coef = 0, None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration, self.kl_coef = state["iteration"], state["kl_coef"]


def _start(
    config: PpoConfig, run_dir: Path, model: PolicyWithValue, optimizer: torch.optim.Optimizer,
    controller: AdaptiveKLController | FixedKLController, tokenizer: Tokenizer,
) -> tuple[TrainState, int]:  # fmt: skip
    """A fresh run directory, or the newest checkpoint restored (model, optimizer, β) to continue with a
    fresh rollout; returns the loop state and the next rollout's number."""
    resumed = _Resumed()
    state = start_or_resume(run_dir, resume=config.resume, model=model, optimizer=optimizer, data=resumed,
                            tokenizer=tokenizer)  # fmt: skip
    if resumed.kl_coef is not None:
        controller.value = resumed.kl_coef
    return state, resumed.iteration


def _save(model: PolicyWithValue, run_dir: Path, config: PpoConfig) -> None:
    """The policy alone as a model directory (adapters merged), and the value head beside it."""
    if config.lora:
        merge_lora(model)
    save_model(model.policy(), run_dir, extra_config={"train": to_dict(config)})
    head = {name: t.detach().cpu().contiguous() for name, t in model.value_head.state_dict().items()}
    save_file(head, str(run_dir / "value_head.safetensors"))


# ----------------------------------------------------------------------------- summary


def _summary(
    config: PpoConfig, state: TrainState, records: list[dict[str, Any]], after: dict[str, float], *,
    fraction: float, prompts: tuple[int, int],
) -> dict[str, Any]:  # fmt: skip
    return {
        "policy": str(Path(config.policy).resolve()),
        "reward": ",".join(str(Path(run).resolve()) for run in config.reward_runs)
        or "a module passed to ppo()",
        "reference": str(Path(config.reference or config.policy).resolve()),
        "steps": state.step,
        "rollouts": len(records),
        "prompts": prompts[0],
        "prompts_too_long": prompts[1],
        "samples_per_prompt": config.samples_per_prompt,
        "group_reward": config.group_reward if config.samples_per_prompt > 1 else None,
        "lora": config.lora,
        "trainable_fraction": round(fraction, 5),
        **before_and_after(records, after),
        "train_minutes": round(state.elapsed_s / 60, 3),
    }
