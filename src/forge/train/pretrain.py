"""Pretraining: next-token prediction on token shards, from scratch or resumed.

Setup in the order it runs: runtime (threads, device, seed) → tokenizer and shards (checked to belong
together) → model (preset + overrides, vocabulary from the tokenizer) → optimizer → resume → the one
training loop → final evaluation on the whole validation split beside a unigram baseline → the run
directory (`model.safetensors`, `config.json`, `tokenizer/`, `metrics.jsonl`, `loss.png`, `summary.json`).
"""

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from forge.config import to_dict
from forge.data.shards import BatchLoader, PrefetchLoader, TokenShards, iter_eval_batches
from forge.errors import CheckpointError, ConfigError, DataError
from forge.infer.engine import generate_text
from forge.infer.sampling import SamplingConfig
from forge.io import write_json
from forge.model.config import ModelConfig, flops_per_token
from forge.model.io import save_model
from forge.model.transformer import Transformer
from forge.runtime import available_cores, resolve_device, seed_everything, set_threads
from forge.tokenizer.bpe import Tokenizer
from forge.train.checkpoint import find_resumable, load_checkpoint
from forge.train.distributed import World, close_world, full_state, init_world, unwrap, wrap_model
from forge.train.evaluate import evaluate, unigram_bpb, unigram_counts
from forge.train.loop import TrainConfig, TrainState, train
from forge.train.metrics import plot_losses
from forge.train.mfu import measure_peak_flops
from forge.train.optim import build_optimizer
from forge.train.report import hardware, write_report


@dataclass(frozen=True, kw_only=True)
class PretrainConfig(TrainConfig):
    """Pretraining: the training-loop options plus data, output and model."""

    data: str = "data/tokens"
    """directory of token shards written by `forge data tokenize`"""
    tokenizer: str = ""
    """tokenizer directory written by `forge tokenizer train`; empty = the one the shards were made with,
    as recorded in their meta.json"""
    out: str = "runs/pretrain"
    """run directory to write (model, config, metrics, plot, checkpoints)"""
    resume: bool = False
    """continue the run in --out from its newest valid checkpoint"""
    parallel: str = "ddp"
    """with several processes (`torchrun --nproc-per-node N -m forge.cli.main pretrain ...`): ddp
    (replicate the model) or fsdp (shard parameters, gradients and optimizer state); --batch-size is
    per process"""
    model: ModelConfig = field(default_factory=ModelConfig)
    """model shape (set by --preset; the vocabulary size always comes from the tokenizer)"""


def _padded_vocab(vocab_size: int) -> int:
    # a multiple of 64 keeps the embedding and output matmuls on fast kernel paths
    return (vocab_size + 63) // 64 * 64


def _setup_model_config(config: PretrainConfig, tokenizer: Tokenizer, run_dir: Path) -> ModelConfig:
    if config.resume:
        saved = run_dir / "config.json"
        if not saved.is_file():
            raise CheckpointError(f"--resume: {saved} not found; start the run without --resume first")
        return ModelConfig(**json.loads(saved.read_text())["model"])
    return dataclasses.replace(config.model, vocab_size=_padded_vocab(tokenizer.vocab_size))


def load_data(config: PretrainConfig) -> tuple[TokenShards, TokenShards, Tokenizer]:
    """The train and val shards of `--data` and the tokenizer, checked to belong together."""
    train_shards, val_shards = TokenShards(config.data, "train"), TokenShards(config.data, "val")
    tokenizer_dir = config.tokenizer or train_shards.meta.get("tokenizer", "")
    if not tokenizer_dir:
        raise ConfigError(
            f"{config.data}/meta.json does not say which tokenizer made it; pass --tokenizer DIR"
        )
    tokenizer = Tokenizer.load(tokenizer_dir)
    expected = train_shards.meta.get("tokenizer_fingerprint")
    if expected and expected != tokenizer.fingerprint():
        raise DataError(
            f"{config.data} was tokenized with a different tokenizer than {tokenizer_dir} "
            f"(fingerprint {expected} vs {tokenizer.fingerprint()}); pass the matching --tokenizer "
            "or re-run `forge data tokenize`"
        )
    return train_shards, val_shards, tokenizer


def pretrain(config: PretrainConfig) -> dict[str, Any]:
    """Train a model as configured; return the summary written to `summary.json` (on rank 0; other
    ranks of a distributed run return {"rank": N})."""
    world, device = init_world(config.parallel, resolve_device(config.device))
    try:
        return _pretrain(config, world, device)
    finally:
        close_world(world)


def _pretrain(config: PretrainConfig, world: World, device: torch.device) -> dict[str, Any]:
    started = time.perf_counter()
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = set_threads(config.threads or max(1, available_cores() // local_processes))
    seed_everything(config.seed)  # the same on every rank: identical initial weights
    run_dir = Path(config.out)
    if not config.resume and (run_dir / "checkpoints").is_dir():
        raise ConfigError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
        )

    train_shards, val_shards, tokenizer = load_data(config)
    model_config = _setup_model_config(config, tokenizer, run_dir)
    seq_len = config.seq_len or model_config.context_length
    if seq_len > model_config.context_length:
        raise ConfigError(
            f"--seq-len {seq_len} exceeds the model's context length {model_config.context_length}"
        )
    if device.type == "cuda":  # TF32 matmuls and convolutions: float32 training at tensor-core speed
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    plain = Transformer(model_config).to(device)
    plain.activation_checkpointing = config.activation_checkpointing
    model = wrap_model(plain, world, device)  # the optimizer must see the (possibly sharded) parameters
    if config.compile:
        model = torch.compile(model)  # type: ignore[assignment]  # evaluation and samples use `plain`
    optimizer = build_optimizer(
        model,
        lr=config.lr,
        weight_decay=config.weight_decay,
        betas=(config.beta1, config.beta2),
        device=device,
    )
    batches = BatchLoader(
        train_shards, config.batch_size, seq_len, seed=config.seed, rank=world.rank, world_size=world.size
    )
    loader = PrefetchLoader(
        batches, pin_memory=device.type == "cuda"
    )  # the next batches, assembled meanwhile
    state = TrainState()
    if config.resume:
        checkpoint = find_resumable(run_dir)
        if checkpoint is None:
            raise CheckpointError(f"--resume: no valid checkpoint in {run_dir / 'checkpoints'}")
        saved = load_checkpoint(checkpoint, model=model, optimizer=optimizer)
        state = TrainState(**saved["train_state"])
        state.interrupted = False
        loader.load_state_dict(saved["data"])
        if world.is_main:
            print(f"resuming from {checkpoint} (step {state.step}, {state.tokens:,} tokens)")
    elif world.is_main:
        _write_run_files(run_dir, config, model_config, tokenizer)

    token_bytes = torch.from_numpy(tokenizer.token_byte_lengths().astype("int64"))
    token_bytes = torch.nn.functional.pad(token_bytes, (0, model_config.vocab_size - len(token_bytes)))

    def run_eval(final: bool) -> dict[str, float]:
        limit = None if final or config.eval_batches == 0 else config.eval_batches
        batches = iter_eval_batches(val_shards, config.batch_size, seq_len, max_batches=limit)
        # every rank runs it (FSDP needs all of them in each forward); they all see the same batches
        return evaluate(
            unwrap(model), batches, token_bytes, device=device, autocast_dtype=config.autocast_dtype
        )

    def run_sample() -> str:
        return sample_text(plain, tokenizer, config.sample_prompt, device=device)

    n_params = plain.num_parameters()
    per_token = flops_per_token(model_config, seq_len)
    dtype = config.autocast_dtype or torch.float32
    peak = config.peak_tflops * 1e12 or world.size * measure_peak_flops(dtype, device, seconds=1.0)
    if world.is_main:
        where = f"{world.size} processes ({world.mode}), " if world.distributed else ""
        print(
            f"model: {n_params / 1e6:.2f}M parameters, {model_config.num_layers} layers, "
            f"dim {model_config.dim}, context {model_config.context_length} | "
            f"data: {len(train_shards):,} train tokens | "
            f"{where}device {device}, {threads} threads, {config.dtype} | "
            f"peak {peak / 1e12:.2f} TFLOP/s (measured matmul), {per_token / 1e6:.1f} MFLOP per token"
        )
    # a sample needs the whole model in one process: rank 0 of a replicated (DDP) run, not a sharded one
    can_sample = world.is_main and not (world.distributed and world.mode == "fsdp")
    state = train(
        model,
        optimizer,
        config,
        run_dir=run_dir,
        next_batch=loader.next_batch,
        data_state=loader.state_dict,
        state=state,
        device=device,
        evaluate=run_eval,
        sample=run_sample if can_sample else None,
        world=world,
        flops_per_token=per_token,
        peak_flops=peak,
    )
    loader.close()
    if state.interrupted:
        return {"interrupted": True, "step": state.step}
    if world.distributed:  # gather the full weights (every rank takes part); rank 0 finishes alone
        weights, _ = full_state(model, optimizer)
        if not world.is_main:
            return {"rank": world.rank}
        plain = Transformer(model_config)
        plain.load_state_dict(weights)
    model = plain
    return _finish(
        run_dir,
        model,
        tokenizer,
        config,
        state,
        train_shards,
        val_shards,
        seq_len,
        token_bytes,
        n_params,
        started,
        per_token,
        peak,
        threads,
        world.size,
    )


def sample_text(
    model: Transformer,
    tokenizer: Tokenizer,
    prompt: str,
    *,
    device: torch.device,
    max_new_tokens: int = 96,
    seed: int = 0,
) -> str:
    """A short seeded sample from the model, prompt included."""
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.8, top_k=50, seed=seed)
    return prompt + "".join(generate_text(model, tokenizer, prompt, sampling, device=device))


def _write_run_files(
    run_dir: Path, config: PretrainConfig, model_config: ModelConfig, tokenizer: Tokenizer
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = run_dir / "tokenizer"
    if tokenizer_dir.exists():
        shutil.rmtree(tokenizer_dir)
    tokenizer.save(tokenizer_dir)
    write_json(run_dir / "config.json", {"model": to_dict(model_config), "train": to_dict(config)})


def _finish(
    run_dir: Path,
    model: Transformer,
    tokenizer: Tokenizer,
    config: PretrainConfig,
    state: TrainState,
    train_shards: TokenShards,
    val_shards: TokenShards,
    seq_len: int,
    token_bytes: torch.Tensor,
    n_params: int,
    started: float,
    per_token: float,
    peak: float,
    threads: int,
    processes: int,
) -> dict[str, Any]:
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    final_eval = next(r for r in reversed(metrics) if "val_loss" in r)
    counts = unigram_counts(train_shards, model.config.vocab_size)
    unigram = unigram_bpb(
        counts, iter_eval_batches(val_shards, config.batch_size, seq_len), token_bytes.numpy()
    )
    save_model(model, run_dir, extra_config={"train": to_dict(config)})
    samples = {
        prompt: sample_text(model, tokenizer, prompt, device=next(model.parameters()).device)
        for prompt in (config.sample_prompt,)
    }
    summary = {
        "steps": state.step,
        "tokens": state.tokens,
        "parameters": n_params,
        "train_minutes": round(state.elapsed_s / 60, 3),
        "wall_minutes": round((time.perf_counter() - started) / 60, 3),
        "tokens_per_s": round(state.tokens / max(state.elapsed_s, 1e-9), 1),
        "mfu": round(per_token * state.tokens / max(state.elapsed_s, 1e-9) / peak, 4),
        "val_loss": final_eval["val_loss"],
        "val_bpb": final_eval["val_bpb"],
        "unigram_bpb": unigram,
        "val_tokens": final_eval.get("val_tokens"),
        "samples": samples,
        "hardware": hardware(next(model.parameters()).device, threads, processes, peak),
    }
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": state.step, "unigram_bpb": unigram}) + "\n")
    write_json(run_dir / "summary.json", summary)
    plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png", title=f"pretraining · {run_dir.name}")
    write_report(
        run_dir, summary, {"model": to_dict(model.config), "train": to_dict(config)}, Path(config.data)
    )
    print(f"val bits/byte {summary['val_bpb']:.4f} (unigram baseline {unigram:.4f}) → {run_dir}")
    return summary
