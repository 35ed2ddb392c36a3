"""`forge reward train BASE_RUN --data prefs.jsonl`: a reward model trained on preference pairs with the
Bradley-Terry loss, through the one training loop.

    load base run → RewardModel (body + score head) → encode pairs, hold some out → measure before
    → train (−log σ(r_chosen − r_rejected − margin)) → measure after → run directory

Design choices:
- the body is the base run's transformer without its lm_head (a reward model predicts no tokens; see
  --likelihood for the exception); the head maps the final hidden state of each sequence's last token
  (right padding: position length − 1) to one number, as InstructGPT (Ouyang et al. 2022) and HF's
  `LlamaForSequenceClassification` do;
- the head has no bias: the Bradley-Terry loss sees only differences of rewards, so a bias would get no
  gradient. Its weights start at N(0, 1/(dim + 1)) as in OpenAI's lm-human-preferences (Ziegler et al.
  2019), so the first rewards are of order one. A reward has no fixed zero: compare rewards, or subtract
  the mean over answers one cares about;
- `--likelihood` adds the answer's log-likelihood under the body's own lm_head, gated per token:
  r = w·h_last + Σ_t σ(g·h_t + b) · log p(y_t | prompt, y_<t), over the answer's tokens and its
  end-of-turn. A slip such as a misspelt name copied from the prompt is a token the language model finds
  improbable, but a head reading the last hidden state does not see it: on the standard-library pairs
  the SFT model puts the chosen answer's opening (up to its first "(") above the rejected one's in 98% of
  the pairs separated by the asked name, while a last-token reward model tells those pairs apart at
  chance. The gate learns from the pairs which tokens' likelihood counts; its weights start at zero and
  its bias at −4 (the term starts near zero), and it learns `--gate-lr-scale` times faster than the rest
  (at the body's rate it learnt too slowly: held-out accuracy 0.81 after 320 steps on those pairs, 0.89
  at 30 times). The lm_head is kept (tied: the embedding);
- the run directory has `model.safetensors` (the body, with `forge.model.io`'s names, so a body with
  tied embeddings also loads with `load_model`, e.g. to start a PPO value model), `reward_head.safetensors`
  (the head, and the gate's `likelihood_gate.*`), `config.json` ({"model", "reward", "train"}; `reward`
  says whether there is a likelihood term) and `tokenizer/`; `load_reward_model` rebuilds the model;
- held-out pairs (--val-data, else --val-fraction of the prompts) give the loss, the accuracy (the
  fraction with r_chosen > r_rejected; a tie counts as wrong) and the mean margin r_chosen − r_rejected,
  before and after training.
"""

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn import functional as F

from forge.align.formats import Messages, parse_prompt, read_preferences
from forge.align.losses import bradley_terry_loss, token_logprobs
from forge.align.pairs import (
    EncodedPairs,
    PairLoader,
    collate,
    encode_pairs,
    encode_side,
    iter_indices,
    load_splits,
    pad_right,
    plot_pair_metrics,
)
from forge.config import to_dict
from forge.errors import CheckpointError, ConfigError, DataError
from forge.io import write_json, write_text, write_with
from forge.model.io import CONFIG_NAME, WEIGHTS_NAME, load_config
from forge.model.transformer import Transformer
from forge.runtime import resolve_device, set_threads
from forge.tokenizer.bpe import Tokenizer
from forge.train.loop import TrainConfig, TrainState, load_start, open_run, start_or_resume, train
from forge.train.optim import build_optimizer
from forge.train.precision import autocast

HEAD_WEIGHTS_NAME = "reward_head.safetensors"


GATE_BIAS = -4.0  # σ(−4) ≈ 0.018: the likelihood term starts near zero and the gate learns where it counts


class RewardModel(nn.Module):
    """A transformer body and a linear score head: `forward(ids, lengths, prompt_lengths)` gives one reward
    per sequence. The body is taken over, not copied. Without `likelihood` its lm_head is removed; with it,
    the reward adds the gated log-likelihood of the answer tokens under the body's own lm_head."""

    def __init__(self, body: Transformer, *, likelihood: bool = False) -> None:
        super().__init__()
        self.likelihood = likelihood
        if not likelihood or body.config.tie_embeddings:
            del body.lm_head  # no tokens predicted, or the tied embedding serves as the lm_head
        self.body = body
        self.score_head = nn.Linear(body.config.dim, 1, bias=False)
        nn.init.normal_(self.score_head.weight, std=1 / math.sqrt(body.config.dim + 1))
        if likelihood:
            self.likelihood_gate = nn.Linear(body.config.dim, 1)
            nn.init.zeros_(self.likelihood_gate.weight)
            nn.init.constant_(self.likelihood_gate.bias, GATE_BIAS)

    def forward(self, ids: Tensor, lengths: Tensor, prompt_lengths: Tensor) -> Tensor:
        """ids (B, T), right-padded; lengths (B,); prompt_lengths (B,), the tokens before the answer
        → rewards (B,) in float32."""
        return self.rewards_and_token_terms(ids, lengths, prompt_lengths)[0]

    def rewards_and_token_terms(
        self, ids: Tensor, lengths: Tensor, prompt_lengths: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The rewards (B,), and the part of them earned on single tokens (B, T-1), aligned with ids[:, 1:]:
        σ(gate(h_t)) · log p(token t | tokens < t) on each answer token (zeros without `likelihood`). PPO
        credits that part where it was earned, the rest on the answer's last token."""
        hidden = self.body.hidden_states(ids)  # (B, T, C)
        last = hidden[torch.arange(ids.shape[0], device=ids.device), lengths - 1]  # (B, C)
        rewards = self.score_head(last).squeeze(-1).float()  # (B,)
        if not self.likelihood:
            return rewards, torch.zeros(ids.shape[0], ids.shape[1] - 1, device=ids.device)
        position = torch.arange(1, ids.shape[1], device=ids.device)[None]  # (1, T-1): token t of ids[:, 1:]
        answer = (position >= prompt_lengths[:, None]) & (position < lengths[:, None])  # (B, T-1)
        lm_head = self.body.model.embed_tokens if self.body.config.tie_embeddings else self.body.lm_head
        logits = F.linear(hidden[:, :-1][answer], lm_head.weight).float()  # (N, V): answer tokens only
        logprobs = token_logprobs(logits, ids[:, 1:][answer])  # (N,)
        gates = torch.sigmoid(self.likelihood_gate(hidden[:, 1:][answer]).squeeze(-1).float())  # (N,)
        terms = torch.zeros(answer.shape, device=ids.device, dtype=torch.float32)  # (B, T-1)
        terms[answer] = gates * logprobs
        return rewards + terms.sum(1), terms


class RewardEnsemble(nn.Module):
    """Several reward models scoring as one: the mean of their rewards and of their per-token terms, the
    mean optimisation of Coste et al. 2024 ("Reward Model Ensembles Help Mitigate Overoptimization").
    A policy that finds an answer one member over-rates gains only a share of that member's error."""

    def __init__(self, members: Sequence[RewardModel]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, ids: Tensor, lengths: Tensor, prompt_lengths: Tensor) -> Tensor:
        """As `RewardModel.forward`: rewards (B,) in float32."""
        return self.rewards_and_token_terms(ids, lengths, prompt_lengths)[0]

    def rewards_and_token_terms(
        self, ids: Tensor, lengths: Tensor, prompt_lengths: Tensor
    ) -> tuple[Tensor, Tensor]:
        """As `RewardModel.rewards_and_token_terms`, averaged over the members."""
        members = cast(Sequence[RewardModel], self.members)
        parts = [member.rewards_and_token_terms(ids, lengths, prompt_lengths) for member in members]
        rewards, terms = (torch.stack(part).mean(0) for part in zip(*parts, strict=True))
        return rewards, terms


def save_reward_model(model: RewardModel, directory: str | Path, *, extra_config: dict[str, Any]) -> None:
    """Write the body (`model.safetensors`), the head (`reward_head.safetensors`) and `config.json`."""
    directory = Path(directory)
    body = {name: t.detach().cpu().contiguous() for name, t in model.body.state_dict().items()}
    heads = {"weight": model.score_head.weight}
    if model.likelihood:
        heads |= {f"likelihood_gate.{name}": t for name, t in model.likelihood_gate.state_dict().items()}
    head = {name: t.detach().cpu().contiguous() for name, t in heads.items()}
    write_with(directory / WEIGHTS_NAME, lambda tmp: save_file(body, str(tmp), metadata={"format": "pt"}))
    write_with(directory / HEAD_WEIGHTS_NAME, lambda tmp: save_file(head, str(tmp)))
    write_json(directory / CONFIG_NAME, {"model": asdict(model.body.config), **extra_config})


def _read_weights(path: Path, device: str | torch.device) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} not found; is this a reward model written by `forge reward train`?")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors file ({e}); the file is damaged") from e


def load_reward_models(
    directories: Sequence[str | Path], *, device: str | torch.device = "cpu"
) -> RewardModel | RewardEnsemble:
    """One reward model, or the `RewardEnsemble` of several, from run directories of `forge reward train`."""
    if not directories:
        raise ConfigError("give at least one reward model run directory (written by `forge reward train`)")
    members = [load_reward_model(directory, device=device) for directory in directories]
    return members[0] if len(members) == 1 else RewardEnsemble(members)


def load_reward_model(directory: str | Path, *, device: str | torch.device = "cpu") -> RewardModel:
    """The `RewardModel` of a run directory written by `forge reward train`, float32, in eval mode."""
    directory = Path(directory)
    likelihood = bool(_reward_section(directory).get("likelihood", False))
    with torch.device(device):
        model = RewardModel(Transformer(load_config(directory)), likelihood=likelihood)
    body = _read_weights(directory / WEIGHTS_NAME, device)
    expected = model.body.state_dict().keys()
    if "lm_head.weight" not in expected:
        body.pop("lm_head.weight", None)  # the base's, if the body was saved with one
    if body.keys() != expected:
        missing, unexpected = sorted(expected - body.keys()), sorted(body.keys() - expected)
        raise CheckpointError(
            f"{directory / WEIGHTS_NAME}: weights do not match config.json (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    model.body.load_state_dict(body)
    head = _read_weights(directory / HEAD_WEIGHTS_NAME, device)
    gate = {name.removeprefix("likelihood_gate."): head.pop(name) for name in list(head)
            if name.startswith("likelihood_gate.")}  # fmt: skip
    if likelihood != bool(gate) or set(head) != {"weight"}:
        raise CheckpointError(
            f"{directory / HEAD_WEIGHTS_NAME}: its tensors ({sorted(head) + sorted(gate)}) do not match "
            f"config.json's reward.likelihood = {likelihood}; were they written together?"
        )
    model.score_head.load_state_dict(head)
    if likelihood:
        model.likelihood_gate.load_state_dict(gate)
    return model.eval()


def _reward_section(directory: Path) -> dict[str, Any]:
    """The "reward" object of a reward run's config.json (empty when there is none)."""
    try:
        section = json.loads((directory / CONFIG_NAME).read_text(encoding="utf-8")).get("reward", {})
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}  # load_config, called next, names what is wrong with the file
    return section if isinstance(section, dict) else {}


@dataclass(frozen=True, kw_only=True)
class RewardConfig(TrainConfig):
    """Reward modelling: the training-loop options plus base run, preference pairs and margin."""

    base: str = ""
    """run directory whose transformer becomes the reward model's body (an SFT run, or a pretrained one)"""
    data: str = "data/prefs/train.jsonl"
    """preference pairs: JSONL of {"prompt": str or [messages], "chosen": str, "rejected": str}"""
    val_data: str = ""
    """held-out pairs (empty: hold out --val-fraction of the prompts of --data)"""
    val_fraction: float = 0.1
    """share of the prompts of --data held out when --val-data is not given (split by a hash of the prompt
    seeded with --seed)"""
    margin: float = 0.0
    """margin m of the loss −log σ(r_chosen − r_rejected − m) (Llama 2, eq. 2)"""
    likelihood: bool = False
    """add to the reward the answer's log-likelihood under the body's own lm_head, each token weighted by a
    learned gate: the model then sees tokens its language model finds improbable, such as a misspelt name"""
    gate_lr_scale: float = 30.0
    """with --likelihood: the gate's learning rate as a multiple of --lr (its weights start at zero)"""
    out: str = "runs/reward"
    """run directory to write"""
    resume: bool = False
    """continue the run in --out from its newest valid checkpoint"""
    lr: float = 1e-4
    """peak learning rate (1e-4 suits the tiny and small presets, whose pretraining peaks at 3e-3; use
    ~1e-5 for models of a billion weights)"""
    batch_size: int = 8
    """preference pairs per micro-batch (each is two sequences)"""
    warmup_steps: int = 10
    """steps of linear learning-rate warm-up"""
    eval_every: int = 50
    """evaluate on the held-out pairs every N steps (0 = only at the end)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.base:
            raise ConfigError("give the run to start from: forge reward train BASE_RUN --data prefs.jsonl")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.gate_lr_scale <= 0:
            raise ConfigError(f"--gate-lr-scale must be positive, got {self.gate_lr_scale}")


@torch.no_grad()
def pair_rewards(
    model: RewardModel, pairs: EncodedPairs, *, pad_id: int, batch_size: int, device: torch.device,
    dtype: torch.dtype | None = None, max_batches: int = 0,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Rewards (N,) of the chosen and of the rejected side of every pair (of the first `max_batches`)."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    for indices in iter_indices(len(pairs), batch_size, max_batches):
        ids, lengths, prompt_lengths = collate(pairs, indices, pad_id)
        with autocast(device, dtype):
            rewards = model(ids.to(device), lengths.to(device), prompt_lengths.to(device)).cpu()  # (2B,)
        chosen.append(rewards[: len(indices)])
        rejected.append(rewards[len(indices) :])
    model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def preference_metrics(chosen: Tensor, rejected: Tensor, margin: float = 0.0) -> dict[str, float]:
    """Bradley-Terry loss, accuracy (chosen strictly above rejected) and mean margin of reward pairs."""
    if len(chosen) == 0:
        return {"loss": math.nan, "accuracy": math.nan, "margin": math.nan}
    return {
        "loss": float(bradley_terry_loss(chosen, rejected, margin)),
        "accuracy": float((chosen > rejected).float().mean()),
        "margin": float((chosen - rejected).mean()),
    }


def train_reward_model(config: RewardConfig) -> dict[str, Any]:
    """Train a reward model as configured; return the summary (also `summary.json` in the run directory)."""
    started = time.perf_counter()
    run_dir, device, threads = open_run(config, config.out, resume=config.resume)
    body, tokenizer, seq_len = load_start(config.base, device, config.seq_len)
    model = RewardModel(body, likelihood=config.likelihood).to(device)
    train_pairs, val_pairs = load_splits(config.data, config.val_data, config.val_fraction, config.seed)
    train_encoded, too_long = encode_pairs(tokenizer, train_pairs, seq_len=seq_len)
    val_encoded, val_too_long = encode_pairs(tokenizer, val_pairs, seq_len=seq_len)
    pad_id = tokenizer.pad_id

    def measure(final: bool = True) -> dict[str, float]:
        chosen, rejected = pair_rewards(model, val_encoded, pad_id=pad_id, batch_size=config.batch_size,
                                        device=device, dtype=config.autocast_dtype,
                                        max_batches=0 if final else config.eval_batches)  # fmt: skip
        return preference_metrics(chosen, rejected, config.margin)

    def loss_fn(model: nn.Module, ids: Tensor, lengths: Tensor, prompt_lengths: Tensor) -> Tensor:
        rewards = model(ids, lengths, prompt_lengths)  # (2B,): the chosen sides, then the rejected ones
        half = rewards.shape[0] // 2
        return bradley_terry_loss(rewards[:half], rewards[half:], config.margin)

    loader = PairLoader(len(train_encoded), config.batch_size, seed=config.seed)

    def next_batch() -> tuple[Tensor, Tensor, Tensor]:
        return collate(train_encoded, loader.next_indices(), pad_id)

    before = measure()
    gate_scales = {f"likelihood_gate.{name}": config.gate_lr_scale for name in ("weight", "bias")}
    optimizer = build_optimizer(model, lr=config.lr, weight_decay=config.weight_decay,
                                betas=(config.beta1, config.beta2), device=device,
                                lr_scales=gate_scales if config.likelihood else None)  # fmt: skip
    state = start_or_resume(
        run_dir, resume=config.resume, model=model, optimizer=optimizer, data=loader, tokenizer=tokenizer
    )
    print(f"reward model: {len(train_encoded):,} training pairs, {len(val_encoded):,} held out "
          f"({too_long + val_too_long:,} longer than {seq_len} tokens left out); "
          f"held-out accuracy before training {before['accuracy']:.3f}")  # fmt: skip
    state = train(model, optimizer, config, run_dir=run_dir, next_batch=next_batch,
                  data_state=loader.state_dict, state=state, device=device,
                  evaluate=measure if len(val_encoded) else None, loss_fn=loss_fn)  # fmt: skip
    if state.interrupted:
        return {"interrupted": True, "step": state.step}
    after = measure()
    reward_info = {"head": HEAD_WEIGHTS_NAME, "base": str(Path(config.base).resolve()),
                   "likelihood": config.likelihood}  # fmt: skip
    save_reward_model(model, run_dir, extra_config={"reward": reward_info, "train": to_dict(config)})
    counts = {"train_pairs": len(train_encoded), "val_pairs": len(val_encoded),
              "pairs_too_long": too_long, "val_pairs_too_long": val_too_long}  # fmt: skip
    summary = _summary(config, state, before, after, counts, started, threads)
    write_json(run_dir / "summary.json", summary)
    plot_pair_metrics(run_dir / "metrics.jsonl", run_dir / "loss.png", title=f"reward model · {run_dir.name}")
    write_text(run_dir / "report.md", _report(run_dir, summary))
    print(f"held-out accuracy {before['accuracy']:.3f} → {after['accuracy']:.3f}, "
          f"mean margin {before['margin']:.3f} → {after['margin']:.3f} → {run_dir}")  # fmt: skip
    return summary


def _summary(
    config: RewardConfig, state: TrainState, before: dict[str, float], after: dict[str, float],
    counts: dict[str, int], started: float, threads: int,
) -> dict[str, Any]:  # fmt: skip
    return {
        "base": str(Path(config.base).resolve()),
        "steps": state.step,
        **counts,
        "margin_target": config.margin,
        **{f"val_{key}_before": value for key, value in before.items()},
        **{f"val_{key}_after": value for key, value in after.items()},
        "train_minutes": round(state.elapsed_s / 60, 3),
        "wall_minutes": round((time.perf_counter() - started) / 60, 3),
        "threads": threads,
    }


def _report(run_dir: Path, s: dict[str, Any]) -> str:
    def fmt(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else "n/a"

    rows = (("accuracy", "accuracy (r_chosen > r_rejected)"), ("margin", "mean margin r_chosen − r_rejected"),
            ("loss", "Bradley-Terry loss"))  # fmt: skip
    lines = [
        f"# Reward model report: {run_dir.name}", "",
        f"Base: `{s['base']}`; {s['train_pairs']:,} training pairs, {s['val_pairs']:,} held out, "
        f"{s['pairs_too_long'] + s['val_pairs_too_long']:,} left out as longer than the context; "
        f"{s['steps']:,} steps.", "",
        "| held-out pairs | before | after |", "|---|---:|---:|",
        *(f"| {name} | {fmt(s[f'val_{key}_before'])} | {fmt(s[f'val_{key}_after'])} |" for key, name in rows),
        "", "![loss](loss.png)", "",
    ]  # fmt: skip
    return "\n".join(lines)


# ----------------------------------------------------------------------------- scoring


@dataclass(frozen=True, kw_only=True)
class ScoreConfig:
    """Scoring answers with a trained reward model."""

    run: str = ""
    """run directory of the reward model (written by `forge reward train`)"""
    data: str = ""
    """JSONL of {"prompt", "answer"} lines to score, or of preference pairs {"prompt", "chosen",
    "rejected"} (both sides are scored and the accuracy reported)"""
    out: str = ""
    """JSONL to write: each line of --data with its "score" (pairs: "chosen_score" and "rejected_score");
    empty: print them"""
    batch_size: int = 16
    """sequences per forward pass"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps"""
    threads: int = 0
    """CPU threads for torch (0 = the cores this process may use)"""

    def __post_init__(self) -> None:
        if not self.run or not self.data:
            raise ConfigError("give the reward model and the answers: forge reward score RUN --data FILE")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")


@torch.no_grad()
def score_answers(
    model: RewardModel, tokenizer: Tokenizer, items: Sequence[tuple[str | Messages, str]], *,
    batch_size: int = 16,
) -> list[float]:  # fmt: skip
    """The reward of each (prompt, answer), the prompt a string (one user turn) or chat messages.

    A sequence longer than the context keeps its last tokens (the answer's end, where the reward is
    read); how many were cut is printed to stderr."""
    device = next(model.parameters()).device
    context = model.body.config.context_length
    sides, prompt_lengths, cut = [], [], 0
    for prompt, answer in items:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        side, prompt_length = encode_side(tokenizer, messages, answer)
        cut += len(side) > context
        sides.append(torch.tensor(side[-context:], dtype=torch.long))
        prompt_lengths.append(max(prompt_length - max(len(side) - context, 0), 0))
    if cut:
        print(f"warning: {cut} of {len(sides)} answers were longer than the context ({context} tokens) "
              "with their prompt; their last tokens were scored", file=sys.stderr)  # fmt: skip
    model.eval()
    scores: list[float] = []
    for start in range(0, len(sides), batch_size):
        ids, lengths = pad_right(sides[start : start + batch_size], tokenizer.pad_id)
        prompts = torch.tensor(prompt_lengths[start : start + batch_size])
        scores += model(ids.to(device), lengths.to(device), prompts.to(device)).tolist()
    return scores


def _read_answers(path: str) -> list[dict[str, Any]]:
    """{"prompt", "answer"} records of a JSONL file (the prompt as messages), checked line by line."""
    records = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
            answer = record["answer"]
            if not isinstance(answer, str):
                raise TypeError("'answer' must be a string")
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(
                f'{where}: not {{"prompt": ..., "answer": "..."}} ({type(e).__name__}: {e})'
            ) from None
        records.append({**record, "prompt": parse_prompt(record["prompt"], f"{where}: prompt")})
    if not records:
        raise DataError(f"{path}: no answers to score")
    return records


def _holds_pairs(path: str) -> bool:
    """Whether the first record of a JSONL file is a preference pair (has "chosen")."""
    try:
        with open(path, encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        return False  # the reader of answers names the line
    return isinstance(record, dict) and "chosen" in record


def score_file(config: ScoreConfig) -> dict[str, Any]:
    """Score the answers (or both sides of the pairs) of `config.data`; write or print them with their
    scores; return the counts (pairs: with accuracy and mean margin)."""
    set_threads(config.threads or None)
    model = load_reward_model(config.run, device=resolve_device(config.device))
    tokenizer = Tokenizer.load(Path(config.run) / "tokenizer")
    if _holds_pairs(config.data):
        records = read_preferences(config.data)
        chosen = score_answers(model, tokenizer, [(r["prompt"], r["chosen"]) for r in records],
                               batch_size=config.batch_size)  # fmt: skip
        rejected = score_answers(model, tokenizer, [(r["prompt"], r["rejected"]) for r in records],
                                 batch_size=config.batch_size)  # fmt: skip
        for record, c, r in zip(records, chosen, rejected, strict=True):
            record.update(chosen_score=c, rejected_score=r)
        result = {"pairs": len(records), **preference_metrics(torch.tensor(chosen), torch.tensor(rejected))}
        del result["loss"]
    else:
        records = _read_answers(config.data)
        scores = score_answers(model, tokenizer, [(r["prompt"], r["answer"]) for r in records],
                               batch_size=config.batch_size)  # fmt: skip
        for record, score in zip(records, scores, strict=True):
            record["score"] = score
        result = {"answers": len(records), "mean_score": sum(scores) / len(scores)}
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    if config.out:
        write_text(config.out, lines)
    else:
        print(lines, end="")
    print(", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()),
          file=sys.stderr)  # fmt: skip
    return result
