"""`forge sft BASE_RUN --data conversations.jsonl`: supervised fine-tuning of a pretrained run on chat
conversations, through the one training loop.

    load base run → [LoRA adapters] → render + mask + pack conversations → measure before
    → train (assistant-only loss, packed rows kept apart) → measure after → run directory

Design choices:
- the run directory has the base's layout (`model.safetensors`, `config.json`, `tokenizer/`), so
  `forge generate`, `forge chat` and `forge serve` load it as they load a pretrained run; with `--lora`
  the adapters are also saved alone (`adapter/`) and merged into `model.safetensors`;
- the loss is cross-entropy on assistant tokens (and their end-of-turn) only, unless `--train-on all`;
  validation reports the same loss on held-out conversations, and the base model's loss on those very
  tokens is measured first, so the gain is read directly;
- forgetting: the base model's own validation split (its token shards, from the base run's config or
  `--forgetting-data`) is evaluated in bits per byte before and after; the report puts that change next
  to the gain on the new task;
- one process: fine-tuning runs here are small; scale-out is pretraining's (`torchrun`).
"""

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from forge.config import to_dict
from forge.data.shards import TokenShards, iter_eval_batches
from forge.errors import ConfigError
from forge.io import write_json, write_text
from forge.model.io import save_model
from forge.model.lora import LoraConfig, apply_lora, merge_lora, save_adapter, trainable_fraction
from forge.model.transformer import Transformer
from forge.tokenizer.special import SPECIAL_TOKENS
from forge.train.evaluate import evaluate
from forge.train.loop import TrainConfig, TrainState, load_start, open_run, start_or_resume, train
from forge.train.metrics import plot_losses
from forge.train.optim import build_optimizer
from forge.train.precision import autocast
from forge.train.sft_data import RowLoader, Rows, encode, iter_rows, pack, read_conversations

TRAIN_ON = ("assistant", "all")


@dataclass(frozen=True, kw_only=True)
class SftConfig(TrainConfig):
    """Supervised fine-tuning: the training-loop options plus base run, conversations and adapters."""

    base: str = ""
    """run directory of the model to fine-tune (written by `forge pretrain` or `forge sft`)"""
    data: str = "data/sft/train.jsonl"
    """training conversations: JSONL of {"messages": [{"role", "content"}, ...]}"""
    val_data: str = ""
    """held-out conversations (empty: val.jsonl beside --data, if there is one)"""
    out: str = "runs/sft"
    """run directory to write"""
    resume: bool = False
    """continue the run in --out from its newest valid checkpoint"""
    train_on: str = "assistant"
    """which tokens carry the loss: assistant (answers and their end-of-turn) or all"""
    packing: bool = True
    """lay several conversations in one row (kept apart by the attention mask) instead of one per row"""
    lora: bool = False
    """train LoRA adapters (--adapter.*) instead of every weight"""
    adapter: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapter shape, with --lora"""
    forgetting_data: str = ""
    """token shards of the base model's domain, evaluated before and after (empty: the base run's data)"""
    lr: float = 3e-4
    """peak learning rate"""
    batch_size: int = 8
    """rows per optimizer step"""
    warmup_steps: int = 10
    """steps of linear learning-rate warm-up"""
    eval_every: int = 50
    """evaluate on the held-out conversations every N steps (0 = only at the end)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.base:
            raise ConfigError("give the run to fine-tune: forge sft BASE_RUN --data conversations.jsonl")
        if self.train_on not in TRAIN_ON:
            raise ConfigError(f"--train-on must be one of {', '.join(TRAIN_ON)}, got {self.train_on!r}")


def _val_path(config: SftConfig) -> Path | None:
    if config.val_data:
        return Path(config.val_data)
    beside = Path(config.data).with_name("val.jsonl")
    return beside if beside.is_file() and beside != Path(config.data) else None


def _forgetting_shards(config: SftConfig) -> TokenShards | None:
    """The base domain's validation split: --forgetting-data, else the data the base run trained on."""
    directory = config.forgetting_data
    if not directory:
        try:
            recorded = json.loads((Path(config.base) / "config.json").read_text())
        except (OSError, ValueError):
            recorded = {}
        directory = recorded.get("train", {}).get("data", "")
        if not directory or not (Path(directory) / "meta.json").is_file():
            return None
    return TokenShards(directory, "val")


@torch.no_grad()
def assistant_loss(
    model: nn.Module, rows: Rows, token_bytes: torch.Tensor, *, batch_size: int, device: torch.device,
    dtype: torch.dtype | None,
) -> dict[str, float]:  # fmt: skip
    """Mean loss (nats/token) and bits per byte over the counted targets of `rows`."""
    was_training = model.training
    model.eval()
    nats = torch.zeros((), dtype=torch.float64)
    tokens = nbytes = 0
    for x, y, segments in iter_rows(rows, batch_size):
        x, y, segments = x.to(device), y.to(device), segments.to(device)
        with autocast(device, dtype):
            logits = model(x, segments=segments)
        counted = y != -100
        nats += F.cross_entropy(logits.float()[counted], y[counted], reduction="sum").double().cpu()
        tokens += int(counted.sum())
        nbytes += int(token_bytes[y[counted].cpu()].sum())
    model.train(was_training)
    if tokens == 0:
        return {"loss": math.nan, "bpb": math.nan, "tokens": 0}
    return {"loss": float(nats) / tokens, "bpb": float(nats) / math.log(2) / max(nbytes, 1), "tokens": tokens}


def masked_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the targets that count (-100 elsewhere), packed rows kept apart."""
    logits = model(x, segments=segments)  # (B, T, vocab)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100)


def sft(config: SftConfig) -> dict[str, Any]:
    """Fine-tune as configured; return the summary (also `summary.json` in the run directory)."""
    started = time.perf_counter()
    run_dir, device, threads = open_run(config, config.out, resume=config.resume)
    model, tokenizer, seq_len = load_start(config.base, device, config.seq_len)
    train_examples, too_long = encode(tokenizer, read_conversations(config.data), seq_len=seq_len,
                                      train_on=config.train_on)  # fmt: skip
    rows = pack(
        train_examples, seq_len=seq_len, pad_id=tokenizer.pad_id, packing=config.packing, seed=config.seed
    )
    val_path = _val_path(config)
    val_rows = None
    if val_path is not None:
        val_examples, _ = encode(
            tokenizer, read_conversations(val_path), seq_len=seq_len, train_on="assistant"
        )
        val_rows = pack(val_examples, seq_len=seq_len, pad_id=tokenizer.pad_id, packing=True, seed=0)
    token_bytes = torch.from_numpy(tokenizer.token_byte_lengths().astype("int64"))
    token_bytes = F.pad(token_bytes, (0, model.config.vocab_size - len(token_bytes)))
    forgetting = _forgetting_shards(config)

    def measure(final: bool = True) -> dict[str, float]:
        assert val_rows is not None
        return assistant_loss(model, val_rows, token_bytes, batch_size=config.batch_size, device=device,
                              dtype=config.autocast_dtype)  # fmt: skip

    def base_domain_bpb() -> float | None:
        if forgetting is None:
            return None
        batches = iter_eval_batches(forgetting, config.batch_size, seq_len, max_batches=config.eval_batches)
        return evaluate(model, batches, token_bytes, device=device, autocast_dtype=config.autocast_dtype)[
            "bpb"
        ]

    def held_out() -> dict[str, float] | dict[str, None]:  # nothing held out: null in summary.json, not NaN
        return measure() if val_rows else {"loss": None, "bpb": None}

    before: dict[str, Any] = {"val": held_out(), "base_domain_bpb": base_domain_bpb()}
    if config.lora:
        wrapped = apply_lora(model, config.adapter, token_ids=range(len(SPECIAL_TOKENS)))
        print(f"LoRA on {len(wrapped)} layers: {100 * trainable_fraction(model):.2f}% of the weights train")
    optimizer = build_optimizer(model, lr=config.lr, weight_decay=config.weight_decay,
                                betas=(config.beta1, config.beta2), device=device,
                                lr_scales=config.adapter.lr_scales if config.lora else None)  # fmt: skip
    loader = RowLoader(rows, config.batch_size, seed=config.seed)
    state = start_or_resume(run_dir, resume=config.resume, model=model, optimizer=optimizer, data=loader,
                            tokenizer=tokenizer)  # fmt: skip
    validation = "no validation rows, so no held-out loss"
    if val_rows:
        loss = before["val"]["loss"]
        validation = f"{len(val_rows):,} validation rows; base model's held-out assistant loss {loss:.4f}"
    print(f"sft: {len(train_examples):,} conversations in {len(rows):,} rows of {seq_len} tokens "
          f"({too_long:,} longer than that left out), {validation}")  # fmt: skip
    state = train(model, optimizer, config, run_dir=run_dir, next_batch=loader.next_batch,
                  data_state=loader.state_dict, state=state, device=device,
                  evaluate=measure if val_rows else None, loss_fn=masked_loss)  # fmt: skip
    if state.interrupted:
        return {"interrupted": True, "step": state.step}
    after: dict[str, Any] = {"val": held_out(), "base_domain_bpb": base_domain_bpb()}
    fraction = trainable_fraction(model) if config.lora else 1.0
    if config.lora:
        save_adapter(model, run_dir / "adapter", config.adapter, base_model=str(Path(config.base).resolve()))
        merge_lora(model)
    assert isinstance(model, Transformer)
    save_model(model, run_dir, extra_config={"train": to_dict(config)})
    summary = _summary(
        config, state, before, after, fraction, len(train_examples), too_long, started, threads
    )
    write_json(run_dir / "summary.json", summary)
    plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png", title=f"fine-tuning · {run_dir.name}")
    write_text(run_dir / "report.md", _report(run_dir, summary))
    if val_rows:
        print(f"held-out assistant loss {before['val']['loss']:.4f} → {after['val']['loss']:.4f} → {run_dir}")
    else:
        print(f"trained → {run_dir}")
    return summary


def _summary(
    config: SftConfig, state: TrainState, before: dict, after: dict, fraction: float, conversations: int,
    too_long: int, started: float, threads: int,
) -> dict[str, Any]:  # fmt: skip
    loss_before, loss_after = before["val"]["loss"], after["val"]["loss"]
    summary: dict[str, Any] = {
        "base": str(Path(config.base).resolve()),
        "steps": state.step,
        "tokens": state.tokens,
        "conversations": conversations,
        "conversations_too_long": too_long,
        "lora": config.lora,
        "trainable_fraction": round(fraction, 5),
        "val_loss_before": loss_before,
        "val_loss_after": loss_after,
        "val_loss_reduction": round(1 - loss_after / loss_before, 4) if loss_before is not None else None,
        "base_domain_bpb_before": before["base_domain_bpb"],
        "base_domain_bpb_after": after["base_domain_bpb"],
        "train_minutes": round(state.elapsed_s / 60, 3),
        "wall_minutes": round((time.perf_counter() - started) / 60, 3),
        "threads": threads,
    }
    if before["base_domain_bpb"] is not None and after["base_domain_bpb"] is not None:
        summary["forgetting_bpb"] = round(after["base_domain_bpb"] - before["base_domain_bpb"], 4)
    return summary


def _report(run_dir: Path, s: dict[str, Any]) -> str:
    def fmt(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else "n/a"

    lines = [
        f"# Fine-tuning report: {run_dir.name}", "",
        f"Base: `{s['base']}`; {s['conversations']:,} conversations, {s['steps']:,} steps, "
        f"{'LoRA' if s['lora'] else 'full'} ({100 * s['trainable_fraction']:.2f}% of weights trained).", "",
        "| | before | after | change |", "|---|---:|---:|---:|",
        f"| new task: held-out assistant loss (nats/token) | {fmt(s['val_loss_before'])} | "
        f"{fmt(s['val_loss_after'])} | {fmt(s.get('val_loss_reduction'))} relative reduction |",
        f"| base domain: validation bits per byte (forgetting) | {fmt(s['base_domain_bpb_before'])} | "
        f"{fmt(s['base_domain_bpb_after'])} | {fmt(s.get('forgetting_bpb'))} |", "",
        "![loss](loss.png)", "",
    ]  # fmt: skip
    return "\n".join(lines)
