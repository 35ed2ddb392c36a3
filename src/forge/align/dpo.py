"""`forge dpo POLICY_RUN --data prefs.jsonl`: Direct Preference Optimization of a fine-tuned run on
preference pairs, through the one training loop.

    load policy → encode pairs, hold some out → reference log-probs of every pair, once
    → [LoRA adapters] → measure before → train (DPO loss) → measure after → run directory

Design choices:
- the loss is `forge.align.losses.dpo_loss` (Rafailov et al. 2023, eq. 7; IPO, Azar et al. 2023, with
  --loss-type ipo; conservative DPO with --label-smoothing) over the summed log-probabilities of the
  response tokens only: the answer and its end-of-turn, never the prompt;
- the reference (default: the policy's own run) is loaded separately, in eval mode, with
  requires_grad off, and is never stepped. Since it is frozen, its log-probabilities of each pair are
  computed once before training and cached (as TRL's `precompute_ref_log_probs`): a training step then
  costs one forward and backward of the policy instead of also a reference forward, and the reference is
  freed before training starts;
- held-out pairs (--val-data, else --val-fraction of the prompts, split as the reward model splits them)
  give the loss, the implicit rewards β·(log π − log π_ref) of chosen and rejected answers, the reward
  accuracy (chosen strictly above rejected; at step 0 policy = reference, every reward is 0 and the
  accuracy is 0) and the mean reward margin, before and after training;
- the run directory has the base's layout (`model.safetensors`, `config.json`, `tokenizer/`), so
  `forge generate`, `forge chat` and `forge serve` load it; with --lora the adapters are merged into
  `model.safetensors` and also saved alone (`adapter/`).
"""

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from forge.align.losses import DPO_LOSS_TYPES, dpo_loss, sequence_logprobs
from forge.align.pairs import (
    IGNORE,
    EncodedPairs,
    PairLoader,
    collate,
    encode_pairs,
    iter_indices,
    load_splits,
    plot_pair_metrics,
    response_targets,
)
from forge.config import to_dict
from forge.errors import ConfigError
from forge.io import write_json, write_text
from forge.model.io import load_model, save_model
from forge.model.lora import LoraConfig, apply_lora, merge_lora, save_adapter, trainable_fraction
from forge.model.transformer import Transformer
from forge.tokenizer.bpe import Tokenizer
from forge.tokenizer.special import SPECIAL_TOKENS
from forge.train.loop import TrainConfig, TrainState, load_start, open_run, start_or_resume, train
from forge.train.optim import build_optimizer
from forge.train.precision import autocast


@dataclass(frozen=True, kw_only=True)
class DpoConfig(TrainConfig):
    """DPO: the training-loop options plus policy, reference, preference pairs and the loss's settings."""

    policy: str = ""
    """run directory of the model to align (usually written by `forge sft`)"""
    reference: str = ""
    """run directory of the frozen reference model (empty: the policy's run, as it was before training)"""
    data: str = "data/prefs/train.jsonl"
    """preference pairs: JSONL of {"prompt": str or [messages], "chosen": str, "rejected": str}"""
    val_data: str = ""
    """held-out pairs (empty: hold out --val-fraction of the prompts of --data)"""
    val_fraction: float = 0.1
    """share of the prompts of --data held out when --val-data is not given (split by a hash of the prompt
    seeded with --seed)"""
    beta: float = 0.1
    """β: the strength of the KL constraint to the reference (smaller lets the policy move further)"""
    loss_type: str = "sigmoid"
    """sigmoid (DPO) or ipo"""
    label_smoothing: float = 0.0
    """probability ε that a preference label is flipped (conservative DPO; sigmoid only)"""
    out: str = "runs/dpo"
    """run directory to write"""
    resume: bool = False
    """continue the run in --out from its newest valid checkpoint"""
    lora: bool = False
    """train LoRA adapters (--adapter.*) instead of every weight"""
    adapter: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapter shape, with --lora"""
    lr: float = 2e-5
    """peak learning rate (2e-5 suits the tiny and small presets, about SFT's 3e-4 / 15; models of a
    billion weights use ~5e-7 to 5e-6)"""
    batch_size: int = 8
    """preference pairs per micro-batch (each is two sequences)"""
    warmup_steps: int = 10
    """steps of linear learning-rate warm-up"""
    eval_every: int = 50
    """evaluate on the held-out pairs every N steps (0 = only at the end)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.policy:
            raise ConfigError("give the run to align: forge dpo POLICY_RUN --data prefs.jsonl")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if not self.beta > 0:
            raise ConfigError(f"--beta must be positive, got {self.beta}")
        if self.loss_type not in DPO_LOSS_TYPES:
            raise ConfigError(
                f"--loss-type must be one of {', '.join(DPO_LOSS_TYPES)}, got {self.loss_type!r}"
            )
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"--label-smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ConfigError("--label-smoothing applies to --loss-type sigmoid only")


def response_logprobs(model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    """Summed log-probability (N,) of the targets that are not -100 (the response tokens)."""
    logits = model(inputs)  # (N, T, vocab)
    return sequence_logprobs(logits, targets, targets != IGNORE)


@torch.no_grad()
def pair_logprobs(
    model: nn.Module, pairs: EncodedPairs, *, pad_id: int, batch_size: int, device: torch.device,
    dtype: torch.dtype | None = None, max_batches: int = 0,
) -> Tensor:  # fmt: skip
    """Response log-probabilities (N, 2) of the chosen and rejected side of every pair (of the first
    `max_batches` batches), in eval mode."""
    was_training = model.training
    model.eval()
    parts = []
    for indices in iter_indices(len(pairs), batch_size, max_batches):
        inputs, targets = response_targets(*collate(pairs, indices, pad_id))
        with autocast(device, dtype):
            logps = response_logprobs(model, inputs.to(device), targets.to(device)).cpu()  # (2B,)
        parts.append(logps.view(2, -1).T)  # (B, 2)
    model.train(was_training)
    return torch.cat(parts) if parts else torch.zeros(0, 2)


def load_reference(config: DpoConfig, device: torch.device) -> Transformer:
    """The frozen reference: its own copy, in eval mode, no gradients; same tokenizer as the policy."""
    path = config.reference or config.policy
    if config.reference:
        ours = Tokenizer.load(Path(config.policy) / "tokenizer").fingerprint()
        if Tokenizer.load(Path(path) / "tokenizer").fingerprint() != ours:
            raise ConfigError(f"--reference {path} has another tokenizer than {config.policy}; DPO compares "
                              "log-probabilities of the same tokens, so both must share one")  # fmt: skip
    reference = load_model(path, device=device).eval()
    reference.requires_grad_(False)
    return reference


def dpo_metrics(policy: Tensor, reference: Tensor, config: DpoConfig) -> dict[str, float]:
    """Loss, implicit rewards, reward accuracy and margin from log-probabilities (N, 2) of pairs."""
    if len(policy) == 0:
        return {"loss": math.nan, "accuracy": math.nan, "margin": math.nan}
    loss, chosen, rejected = dpo_loss(policy[:, 0], policy[:, 1], reference[:, 0], reference[:, 1],
                                      beta=config.beta, loss_type=config.loss_type,
                                      label_smoothing=config.label_smoothing)  # fmt: skip
    return {
        "loss": float(loss),
        "accuracy": float((chosen > rejected).float().mean()),
        "margin": float((chosen - rejected).mean()),
        "chosen_reward": float(chosen.mean()),
        "rejected_reward": float(rejected.mean()),
        "logp_margin": float((policy[:, 0] - policy[:, 1]).mean()),
    }


def dpo(config: DpoConfig) -> dict[str, Any]:
    """Align the policy as configured; return the summary (also `summary.json` in the run directory)."""
    started = time.perf_counter()
    run_dir, device, threads = open_run(config, config.out, resume=config.resume)
    policy, tokenizer, seq_len = load_start(config.policy, device, config.seq_len)
    train_pairs, val_pairs = load_splits(config.data, config.val_data, config.val_fraction, config.seed)
    train_encoded, too_long = encode_pairs(tokenizer, train_pairs, seq_len=seq_len + 1)  # inputs: seq_len
    val_encoded, val_too_long = encode_pairs(tokenizer, val_pairs, seq_len=seq_len + 1)
    pad_id = tokenizer.pad_id

    def logprobs(model: nn.Module, pairs: EncodedPairs, max_batches: int = 0) -> Tensor:
        return pair_logprobs(model, pairs, pad_id=pad_id, batch_size=config.batch_size, device=device,
                             dtype=config.autocast_dtype, max_batches=max_batches)  # fmt: skip

    reference = load_reference(config, device)
    reference_train, reference_val = logprobs(reference, train_encoded), logprobs(reference, val_encoded)
    del reference

    def measure(final: bool = True) -> dict[str, float]:
        logps = logprobs(policy, val_encoded, max_batches=0 if final else config.eval_batches)  # (N, 2)
        return dpo_metrics(logps, reference_val[: len(logps)], config)

    def loss_fn(model: nn.Module, inputs: Tensor, targets: Tensor, reference_logps: Tensor) -> Tensor:
        logps = response_logprobs(model, inputs, targets)  # (2B,): the chosen sides, then the rejected
        half = logps.shape[0] // 2
        loss, _, _ = dpo_loss(logps[:half], logps[half:], reference_logps[:half], reference_logps[half:],
                              beta=config.beta, loss_type=config.loss_type,
                              label_smoothing=config.label_smoothing)  # fmt: skip
        return loss

    loader = PairLoader(len(train_encoded), config.batch_size, seed=config.seed)

    def next_batch() -> tuple[Tensor, Tensor, Tensor]:
        indices = loader.next_indices()
        inputs, targets = response_targets(*collate(train_encoded, indices, pad_id))
        return inputs, targets, reference_train[indices].T.flatten()  # (2B,): chosen, then rejected

    before = measure()
    if config.lora:
        wrapped = apply_lora(policy, config.adapter, token_ids=range(len(SPECIAL_TOKENS)))
        print(f"LoRA on {len(wrapped)} layers: {100 * trainable_fraction(policy):.2f}% of the weights train")
    optimizer = build_optimizer(policy, lr=config.lr, weight_decay=config.weight_decay,
                                betas=(config.beta1, config.beta2), device=device,
                                lr_scales=config.adapter.lr_scales if config.lora else None)  # fmt: skip
    state = start_or_resume(
        run_dir, resume=config.resume, model=policy, optimizer=optimizer, data=loader, tokenizer=tokenizer
    )
    print(f"dpo: {len(train_encoded):,} training pairs, {len(val_encoded):,} held out "
          f"({too_long + val_too_long:,} longer than {seq_len + 1} tokens left out); "
          "reference log-probs computed once")  # fmt: skip
    state = train(policy, optimizer, config, run_dir=run_dir, next_batch=next_batch,
                  data_state=loader.state_dict, state=state, device=device,
                  evaluate=measure if len(val_encoded) else None, loss_fn=loss_fn)  # fmt: skip
    if state.interrupted:
        return {"interrupted": True, "step": state.step}
    after = measure()
    fraction = trainable_fraction(policy) if config.lora else 1.0
    if config.lora:
        save_adapter(
            policy, run_dir / "adapter", config.adapter, base_model=str(Path(config.policy).resolve())
        )
        merge_lora(policy)
    save_model(policy, run_dir, extra_config={"train": to_dict(config)})
    counts = {"train_pairs": len(train_encoded), "val_pairs": len(val_encoded),
              "pairs_too_long": too_long, "val_pairs_too_long": val_too_long}  # fmt: skip
    summary = _summary(config, state, before, after, counts, fraction, started, threads)
    write_json(run_dir / "summary.json", summary)
    plot_pair_metrics(run_dir / "metrics.jsonl", run_dir / "loss.png", title=f"DPO · {run_dir.name}")
    write_text(run_dir / "report.md", _report(run_dir, summary))
    print(f"held-out reward accuracy {before['accuracy']:.3f} → {after['accuracy']:.3f}, "
          f"margin {before['margin']:.3f} → {after['margin']:.3f} → {run_dir}")  # fmt: skip
    return summary


def _summary(
    config: DpoConfig, state: TrainState, before: dict[str, float], after: dict[str, float],
    counts: dict[str, int], fraction: float, started: float, threads: int,
) -> dict[str, Any]:  # fmt: skip
    return {
        "policy": str(Path(config.policy).resolve()),
        "reference": str(Path(config.reference or config.policy).resolve()),
        "steps": state.step,
        **counts,
        "beta": config.beta,
        "loss_type": config.loss_type,
        "lora": config.lora,
        "trainable_fraction": round(fraction, 5),
        **{f"val_{key}_before": value for key, value in before.items()},
        **{f"val_{key}_after": value for key, value in after.items()},
        "train_minutes": round(state.elapsed_s / 60, 3),
        "wall_minutes": round((time.perf_counter() - started) / 60, 3),
        "threads": threads,
    }


def _report(run_dir: Path, s: dict[str, Any]) -> str:
    def fmt(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else "n/a"

    rows = [("accuracy", "reward accuracy (chosen > rejected)"),
            ("margin", "reward margin chosen − rejected"),
            ("chosen_reward", "implicit reward of chosen, β·log π/π_ref"),
            ("rejected_reward", "implicit reward of rejected"),
            ("logp_margin", "log-prob margin log π(chosen) − log π(rejected)"),
            ("loss", "DPO loss")]  # fmt: skip
    lines = [
        f"# DPO report: {run_dir.name}", "",
        f"Policy: `{s['policy']}`; reference: `{s['reference']}`; β = {s['beta']}, {s['loss_type']} loss; "
        f"{s['train_pairs']:,} training pairs, {s['val_pairs']:,} held out, "
        f"{s['pairs_too_long'] + s['val_pairs_too_long']:,} left out as longer than the context; "
        f"{s['steps']:,} steps, {'LoRA' if s['lora'] else 'full'} "
        f"({100 * s['trainable_fraction']:.2f}% of weights trained).", "",
        "| held-out pairs | before | after |", "|---|---:|---:|",
        *(f"| {name} | {fmt(s.get(f'val_{key}_before'))} | {fmt(s.get(f'val_{key}_after'))} |"
          for key, name in rows),
        "", "![loss](loss.png)", "",
    ]  # fmt: skip
    return "\n".join(lines)
