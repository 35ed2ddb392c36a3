"""The one training loop, shared by every stage that trains a language model.

    while step < max_steps and time is left:
        evaluate / sample / checkpoint when due
        accumulate gradients over `grad_accum` micro-batches (optional bf16 autocast)
        clip, step the optimizer at the scheduled learning rate, log

The caller supplies the model, the optimizer, a `next_batch` function, and optional `evaluate` and
`sample` callbacks; the loop owns the schedule, logging, checkpoints and the progress bar. The loss is read
back from the device only at logging steps, so the hot loop never waits on the host. Ctrl-C (SIGINT) or
SIGTERM saves a checkpoint and returns, so no work is lost; SIGKILL, which cannot be caught, loses at most
the steps since the last checkpoint, since checkpoints are written atomically.
"""

import math
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from forge.errors import CheckpointError, ConfigError
from forge.io import write_text
from forge.runtime import resolve_device, seed_everything, set_threads
from forge.train.checkpoint import find_resumable, load_checkpoint, save_checkpoint
from forge.train.distributed import World, gradient_sync
from forge.train.metrics import MetricsLog
from forge.train.mfu import model_flops_utilization
from forge.train.optim import lr_multiplier, set_lr
from forge.train.precision import autocast

if TYPE_CHECKING:
    from forge.model.transformer import Transformer
    from forge.tokenizer.bpe import Tokenizer

# (inputs, targets, *extra): the extras (e.g. the segment ids of packed sequences) go to `loss_fn` too
Batch = tuple[torch.Tensor, ...]
DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Options of the training loop (optimisation, schedule, evaluation, checkpoints, hardware)."""

    batch_size: int = 16
    """sequences per micro-batch"""
    seq_len: int = 0
    """tokens per sequence; 0 = the model's context length"""
    grad_accum: int = 1
    """micro-batches accumulated per optimizer step (global batch = batch_size × grad_accum × seq_len)"""
    max_steps: int = 200
    """optimizer steps to train for"""
    max_minutes: float = 0.0
    """wall-clock budget in minutes (0 = none); the cosine schedule then follows whichever of steps or
    time runs out first, so a time-bounded run still ends at the minimum learning rate"""
    lr: float = 3e-3
    """peak learning rate"""
    min_lr_ratio: float = 0.1
    """final learning rate as a fraction of the peak"""
    warmup_steps: int = 20
    """steps of linear warmup"""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices and embeddings (not on norm gains)"""
    beta1: float = 0.9
    """AdamW β1"""
    beta2: float = 0.95
    """AdamW β2"""
    grad_clip: float = 1.0
    """clip the global gradient norm to this (0 = off)"""
    eval_every: int = 100
    """evaluate on the validation split every N steps (0 = only at the end)"""
    eval_batches: int = 20
    """batches per periodic evaluation (0 = the whole split); the final evaluation uses the whole split"""
    sample_every: int = 0
    """print a sample every N steps (0 = only at the end)"""
    sample_prompt: str = "def "
    """prompt for the periodic samples"""
    log_every: int = 10
    """log the training loss every N steps"""
    checkpoint_every: int = 100
    """save a resumable checkpoint every N steps (0 = only at the end)"""
    keep_checkpoints: int = 2
    """keep only the newest N checkpoints (0 = keep all)"""
    keep_best: bool = False
    """also keep the checkpoint with the lowest validation loss: an evaluation that improves on it saves
    one at once, `checkpoints/best` names it, and pruning never removes it"""
    dtype: str = "float32"
    """compute dtype under autocast: float32, bfloat16 or float16 (weights and optimizer stay float32)"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps"""
    threads: int = 0
    """CPU threads for torch (0 = the cores this process may use)"""
    seed: int = 0
    """seed for initialisation and data order"""
    progress: bool = True
    """show a progress bar"""
    activation_checkpointing: bool = False
    """recompute each block's activations in the backward pass instead of storing them: about a third
    more compute, much less memory (for long sequences or big batches)"""
    compile: bool = False
    """compile the model with torch.compile (a minute or two of compiling first, then faster steps;
    needs a C++ compiler on CPU)"""
    peak_tflops: float = 0.0
    """the peak (TFLOP/s, all processes together) that MFU is measured against; 0 = measure it at the
    start with the matmul of `forge bench-peak` (about a second)"""

    def __post_init__(self) -> None:
        positive = ("batch_size", "grad_accum", "max_steps", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("seq_len", "eval_every", "eval_batches", "sample_every", "checkpoint_every", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"--min-lr-ratio must be between 0 and 1, got {self.min_lr_ratio}")
        if self.max_minutes < 0:
            raise ConfigError(f"--max-minutes must be 0 (no limit) or positive, got {self.max_minutes}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return DTYPES[self.dtype]


@dataclass
class TrainState:
    """What the loop needs to continue exactly where it stopped (saved in every checkpoint)."""

    step: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0
    interrupted: bool = False
    best_val_loss: float | None = None
    best_step: int | None = None

    def progress(self, config: TrainConfig) -> float:
        by_steps = self.step / config.max_steps
        by_time = self.elapsed_s / (60 * config.max_minutes) if config.max_minutes else 0.0
        return max(by_steps, by_time)


def open_run(config: TrainConfig, out: str | Path, *, resume: bool) -> tuple[Path, torch.device, int]:
    """Set threads, device and seed for a run writing to `out`; a run already there needs `resume`.
    Returns the run directory, the device and the number of threads."""
    threads = set_threads(config.threads or None)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    run_dir = Path(out)
    if not resume and (run_dir / "checkpoints").is_dir():
        raise ConfigError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
        )
    return run_dir, device, threads


def load_start(
    source: str | Path, device: torch.device, seq_len: int = 0
) -> tuple["Transformer", "Tokenizer", int]:
    """The model and tokenizer of run directory `source`, and the sequence length to train at: `seq_len`
    (--seq-len), else the model's context, never more."""
    from forge.model.io import load_model
    from forge.tokenizer.bpe import Tokenizer

    model = load_model(source, device=device)
    tokenizer = Tokenizer.load(Path(source) / "tokenizer")
    context = model.config.context_length
    if seq_len > context:
        raise ConfigError(f"--seq-len {seq_len} exceeds the model's context length {context}")
    return model, tokenizer, seq_len or context


def start_or_resume(
    run_dir: Path, *, resume: bool, model: nn.Module, optimizer: torch.optim.Optimizer, data: Any,
    tokenizer: "Tokenizer",
) -> TrainState:  # fmt: skip
    """A fresh run directory holding the tokenizer, or the state of the newest checkpoint restored."""
    if resume:
        state, checkpoint = resume_training(run_dir, model=model, optimizer=optimizer, data=data)
        print(f"resuming from {checkpoint} (step {state.step})")
        return state
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / "tokenizer").exists():
        shutil.rmtree(run_dir / "tokenizer")
    tokenizer.save(run_dir / "tokenizer")
    return TrainState()


def resume_training(
    run_dir: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, data: Any
) -> tuple[TrainState, Path]:
    """Restore model, optimizer, RNG and the data loader (`data.load_state_dict`) from the run's newest
    valid checkpoint; returns the training state to continue from and the checkpoint used."""
    checkpoint = find_resumable(run_dir)
    if checkpoint is None:
        raise CheckpointError(f"--resume: no valid checkpoint in {Path(run_dir) / 'checkpoints'}")
    saved = load_checkpoint(checkpoint, model=model, optimizer=optimizer)
    state = TrainState(**saved["train_state"])
    state.interrupted = False
    data.load_state_dict(saved["data"])
    return state, checkpoint


def next_token_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting y from x (targets of -100 are not counted)."""
    logits = model(x)  # (B, T, vocab)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100)


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    *,
    run_dir: str | Path,
    next_batch: Callable[[], Batch],
    data_state: Callable[[], dict[str, Any]],
    state: TrainState,
    device: torch.device,
    evaluate: Callable[[bool], dict[str, float]] | None = None,
    sample: Callable[[], str] | None = None,
    loss_fn: Callable[..., torch.Tensor] = next_token_loss,
    world: World | None = None,
    flops_per_token: float = 0.0,
    peak_flops: float = 0.0,
) -> TrainState:
    """Train until `max_steps` or `max_minutes`; returns the final state (also on Ctrl-C).

    In a distributed run (`world`) every rank calls this with its own `next_batch`; `evaluate` runs on
    every rank, and rank 0 alone logs, shows progress and writes checkpoints. With `flops_per_token`
    and `peak_flops` (all processes together) each log record carries the model FLOPs utilisation.
    """
    world = world or World()
    log: MetricsLog | _NoLog = (
        MetricsLog(Path(run_dir) / "metrics.jsonl", truncate_after_step=state.step)
        if world.is_main
        else _NoLog()
    )
    bar = tqdm(
        total=None if config.max_minutes else config.max_steps,
        initial=state.step,
        unit="step",
        disable=not config.progress or not world.is_main,
        dynamic_ncols=True,
        smoothing=0.1,
    )

    last_saved = -1

    def checkpoint() -> None:
        nonlocal last_saved
        if last_saved == state.step:
            return
        last_saved = state.step
        payload = {"train_state": vars(state), "data": data_state()}
        save_checkpoint(
            run_dir,
            step=state.step,
            model=model,
            optimizer=optimizer,
            state=payload,
            keep_last=config.keep_checkpoints,
            world=world,
            protect=(state.best_step,) if state.best_step is not None else (),
        )

    def out_of_time() -> bool:
        return config.max_minutes > 0 and state.elapsed_s >= 60 * config.max_minutes

    model.train()
    window_start, window_tokens = time.perf_counter(), 0
    loss_sum = torch.zeros((), device=device)
    try:
        with _terminate_as_interrupt():  # SIGTERM (a scheduler, `kill`) acts like Ctrl-C
            while state.step < config.max_steps and not out_of_time():
                step_start = time.perf_counter()
                if state.step > 0 and _due(state.step, config.eval_every) and evaluate is not None:
                    result = evaluate(False)
                    _log_eval(log, bar, state, result, final=False, show=world.is_main)
                    if config.keep_best and (
                        state.best_val_loss is None or result["loss"] < state.best_val_loss
                    ):
                        state.best_val_loss, state.best_step = result["loss"], state.step
                        checkpoint()
                        if world.is_main:
                            write_text(Path(run_dir) / "checkpoints" / "best", f"step-{state.step:07d}\n")
                if state.step > 0 and _due(state.step, config.sample_every) and sample is not None:
                    bar.write(f"--- sample at step {state.step} ---\n{sample()}\n---")
                lr = config.lr * lr_multiplier(
                    state.step,
                    state.progress(config),
                    warmup_steps=config.warmup_steps,
                    min_lr_ratio=config.min_lr_ratio,
                )
                set_lr(optimizer, lr)
                for micro in range(config.grad_accum):
                    x, y, *extra = (t.to(device, non_blocking=True) for t in next_batch())
                    # gradients cross ranks once per step, on the last micro-batch
                    with gradient_sync(model, world, enabled=micro == config.grad_accum - 1):
                        with autocast(device, config.autocast_dtype):
                            loss = loss_fn(model, x, y, *extra) / config.grad_accum
                        loss.backward()
                    loss_sum += loss.detach()
                    window_tokens += x.numel() * world.size
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                state.tokens += config.grad_accum * x.numel() * world.size
                state.elapsed_s += time.perf_counter() - step_start
                bar.update(1)
                if _due(state.step, config.log_every) or state.step == config.max_steps:
                    window_steps = (
                        config.log_every
                        if _due(state.step, config.log_every)
                        else state.step % config.log_every
                    )
                    if world.distributed:  # the mean over every rank's rows: the global batch's loss
                        torch.distributed.all_reduce(loss_sum)
                        loss_sum /= world.size
                    train_loss = loss_sum.item() / max(window_steps, 1)  # the only host sync in the loop
                    now = time.perf_counter()
                    tokens_per_s = window_tokens / (now - window_start)
                    record = {
                        "step": state.step,
                        "tokens": state.tokens,
                        "train_loss": train_loss,
                        "lr": lr,
                        "tokens_per_s": tokens_per_s,
                        "elapsed_s": round(state.elapsed_s, 3),
                    }
                    if flops_per_token and peak_flops:
                        record["mfu"] = model_flops_utilization(flops_per_token, tokens_per_s, peak_flops)
                    log.log(record)
                    bar.set_postfix_str(
                        _postfix(train_loss, tokens_per_s, state, config, record.get("mfu")), refresh=False
                    )
                    if config.max_minutes:  # the budget, not max_steps, decides when this run ends: show that
                        left_s = max(0.0, 60 * config.max_minutes - state.elapsed_s)
                        bar.total = min(
                            config.max_steps, state.step + round(left_s * state.step / state.elapsed_s)
                        )
                    loss_sum.zero_()
                    window_start, window_tokens = now, 0
                    if not math.isfinite(train_loss):
                        raise FloatingPointError(
                            f"training loss became {train_loss} at step {state.step}; "
                            "lower --lr or use --dtype float32"
                        )
                if _due(state.step, config.checkpoint_every):
                    checkpoint()
    except KeyboardInterrupt:
        state.interrupted = True
        bar.write(f"interrupted at step {state.step}: saving a checkpoint; resume with --resume")
    finally:
        bar.close()
    if evaluate is not None and not state.interrupted:
        _log_eval(log, None, state, evaluate(True), final=True, show=world.is_main)
    checkpoint()
    log.close()
    return state


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt as SIGINT does, so the loop saves a checkpoint
    and returns; the previous handler comes back afterwards. Signals reach only the main thread, so
    elsewhere (a training thread) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _NoLog:
    """The metrics log of ranks other than 0: they train and evaluate, rank 0 writes."""

    def log(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _log_eval(
    log: "MetricsLog | _NoLog",
    bar: tqdm | None,
    state: TrainState,
    result: dict[str, float],
    *,
    final: bool,
    show: bool = True,
) -> None:
    # "tokens" is training progress; the evaluation's own counts are val_tokens / val_bytes. `final` marks
    # the whole-split evaluation; periodic ones read only --eval-batches batches
    record = {"step": state.step, "tokens": state.tokens, "val_final": final}
    log.log(record | {f"val_{k}": v for k, v in result.items()})
    message = f"step {state.step}: val loss {result['loss']:.4f}" + "".join(
        f", val {key.replace('bpb', 'bits/byte')} {value:.4f}"
        for key, value in result.items()
        if key != "loss" and isinstance(value, float)
    )
    if not show:
        return
    if bar is not None:
        bar.write(message)
    else:
        print(message)


def _postfix(
    loss: float, tokens_per_s: float, state: TrainState, config: TrainConfig, mfu: float | None = None
) -> str:
    text = f"loss {loss:.3f} | {tokens_per_s:,.0f} tok/s"
    if mfu is not None:
        text += f" | MFU {100 * mfu:.1f}%"
    if config.max_minutes:
        left = max(0.0, 60 * config.max_minutes - state.elapsed_s)
        text += f" | {left / 60:.1f} min left of budget"
    return text
