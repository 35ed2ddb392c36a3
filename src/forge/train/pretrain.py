"""Pretraining: next-token prediction on token shards, from scratch, resumed, or continued from a run.

Setup in the order it runs: runtime (threads, device, seed) → tokenizer and shards (checked to belong
together) → model (preset + overrides, vocabulary from the tokenizer; or the shape and weights of
`--init-from RUN`) → optimizer → resume → the one training loop → final evaluation on the whole
validation split beside a unigram baseline → the run directory (`model.safetensors`, `config.json`,
`tokenizer/`, `metrics.jsonl`, `loss.png`, `summary.json`).

Continued pretraining (`--init-from RUN --data NEW`): the tokenizer is the run's, and the new shards must
have been tokenized with it; shape options may only repeat the run's. Against forgetting, `--replay-data
OLD --replay-fraction F` fills round(F · batch) rows of every batch from the original domain. The original
domain's validation split (`--replay-data`, else the data the run recorded in its config.json, when it
is on this machine) is evaluated beside the new one as `val_loss_original` / `val_bpb_original`, once
with the initial weights (step 0) and at every evaluation after, so forgetting shows in the metrics and
in the summary's `original_domain`.
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
from forge.data.shards import BatchLoader, PrefetchLoader, ReplayLoader, TokenShards, iter_eval_batches
from forge.errors import CheckpointError, ConfigError, DataError
from forge.infer.engine import generate_text
from forge.infer.sampling import SamplingConfig
from forge.io import write_json
from forge.model.config import ModelConfig, flops_per_token
from forge.model.io import load_config, load_model, save_model
from forge.model.transformer import Transformer
from forge.runtime import available_cores, resolve_device, seed_everything, set_threads
from forge.tokenizer.bpe import Tokenizer
from forge.train.distributed import World, close_world, full_state, init_world, unwrap, wrap_model
from forge.train.evaluate import evaluate, unigram_bpb, unigram_counts
from forge.train.loop import TrainConfig, TrainState, resume_training, train
from forge.train.metrics import MetricsLog, plot_losses, read_metrics
from forge.train.mfu import measure_peak_flops, model_flops_utilization
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
    init_from: str = ""
    """a run directory whose final weights start this run (continued pretraining on --data); its
    tokenizer must be the data's, and the model shape is the run's (--preset and --model.* may only
    repeat it)"""
    replay_data: str = ""
    """token shards of the original domain (e.g. the --data of the --init-from run): --replay-fraction of
    every batch comes from them, and their validation split is evaluated as val_loss_original"""
    replay_fraction: float = 0.0
    """fraction of each batch's rows drawn from --replay-data, against forgetting (e.g. 0.1; 0 = replay
    data only evaluated)"""
    model: ModelConfig = field(default_factory=ModelConfig)
    """model shape (set by --preset; the vocabulary size always comes from the tokenizer)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.replay_fraction < 1:
            raise ConfigError(f"--replay-fraction must be in [0, 1), got {self.replay_fraction}; try 0.1")
        if self.replay_fraction and not self.replay_data:
            raise ConfigError(
                "--replay-fraction needs --replay-data DIR (token shards of the original domain)"
            )
        replay_rows = round(self.replay_fraction * self.batch_size)
        if self.replay_fraction and not 0 < replay_rows < self.batch_size:
            raise ConfigError(
                f"--replay-fraction {self.replay_fraction} of --batch-size {self.batch_size} gives "
                f"{replay_rows} replay rows; both the new and the replayed data need at least one row"
            )


def _padded_vocab(vocab_size: int) -> int:
    # a multiple of 64 keeps the embedding and output matmuls on fast kernel paths
    return (vocab_size + 63) // 64 * 64


def _setup_model_config(config: PretrainConfig, tokenizer: Tokenizer, run_dir: Path) -> ModelConfig:
    if config.resume:
        saved = run_dir / "config.json"
        if not saved.is_file():
            raise CheckpointError(f"--resume: {saved} not found; start the run without --resume first")
        return ModelConfig(**json.loads(saved.read_text())["model"])
    if config.init_from:
        return _init_model_config(config)
    return dataclasses.replace(config.model, vocab_size=_padded_vocab(tokenizer.vocab_size))


def _init_model_config(config: PretrainConfig) -> ModelConfig:
    """The --init-from run's shape; a shape option set away from its default must repeat the run's."""
    run = load_config(config.init_from)
    defaults = ModelConfig()
    conflicts = [
        f"--model.{f.name.replace('_', '-')} {getattr(config.model, f.name)} (the run has "
        f"{getattr(run, f.name)})"
        for f in dataclasses.fields(ModelConfig)
        if f.name != "vocab_size"
        and getattr(config.model, f.name) not in (getattr(defaults, f.name), getattr(run, f.name))
    ]
    if conflicts:
        raise ConfigError(
            f"--init-from {config.init_from} takes the model shape from its config.json, but "
            f"{', '.join(conflicts)} differs; drop --preset and the --model.* options"
        )
    return run


def tokenizer_dir(config: PretrainConfig, train_shards: TokenShards) -> str:
    """Where this run's tokenizer comes from: the --init-from run's on a fresh continued run, else
    --tokenizer, else the one the shards' meta.json names."""
    if config.init_from and not config.resume:
        return str(Path(config.init_from) / "tokenizer")
    return config.tokenizer or train_shards.meta.get("tokenizer", "")


def load_data(config: PretrainConfig) -> tuple[TokenShards, TokenShards, Tokenizer]:
    """The train and val shards of `--data` and the tokenizer, checked to belong together."""
    train_shards, val_shards = TokenShards(config.data, "train"), TokenShards(config.data, "val")
    source = tokenizer_dir(config, train_shards)
    if not source:
        raise ConfigError(
            f"{config.data}/meta.json does not say which tokenizer made it; pass --tokenizer DIR"
        )
    if config.init_from and not config.resume:
        if not Path(source).is_dir():
            raise CheckpointError(
                f"--init-from {config.init_from}: {source} not found; pass a run directory written by "
                "`forge pretrain`"
            )
        tokenizer = Tokenizer.load(source)
        if config.tokenizer and Tokenizer.load(config.tokenizer).fingerprint() != tokenizer.fingerprint():
            raise ConfigError(
                f"--tokenizer {config.tokenizer} is not the tokenizer of --init-from {config.init_from}; "
                "drop --tokenizer: a continued run uses the run's"
            )
        check_fingerprint(train_shards, tokenizer, source, "--data")
        return train_shards, val_shards, tokenizer
    tokenizer = Tokenizer.load(source)
    expected = train_shards.meta.get("tokenizer_fingerprint")
    if expected and expected != tokenizer.fingerprint():
        raise DataError(
            f"{config.data} was tokenized with a different tokenizer than {source} "
            f"(fingerprint {expected} vs {tokenizer.fingerprint()}); pass the matching --tokenizer "
            "or re-run `forge data tokenize`"
        )
    return train_shards, val_shards, tokenizer


def check_fingerprint(shards: TokenShards, tokenizer: Tokenizer, source: str, flag: str) -> None:
    """Raise a ConfigError unless `shards` (given as `flag`) were made with `tokenizer` (from `source`)."""
    recorded = shards.meta.get("tokenizer_fingerprint")
    if recorded != tokenizer.fingerprint():
        raise ConfigError(
            f"{flag} {shards.directory} was tokenized with tokenizer fingerprint "
            f"{recorded or '(not recorded)'}, but this run's tokenizer {source} has fingerprint "
            f"{tokenizer.fingerprint()}; tokenize the data with the run's tokenizer: "
            f"`forge data tokenize DOCS --tokenizer {source} --out DIR`"
        )


def original_val_shards(config: PretrainConfig, tokenizer: Tokenizer, source: str) -> TokenShards | None:
    """The original domain's validation split: --replay-data's, else that of the data the --init-from run
    recorded in its config.json if it is on this machine, made with this tokenizer, and not --data."""
    if config.replay_data:
        replay_val = TokenShards(config.replay_data, "val")
        check_fingerprint(replay_val, tokenizer, source, "--replay-data")
        return replay_val if len(replay_val) else None
    if not config.init_from or not (Path(config.init_from) / "config.json").is_file():
        return None
    saved = json.loads((Path(config.init_from) / "config.json").read_text())
    recorded = Path(saved.get("train", {}).get("data", ""))
    if not saved.get("train", {}).get("data") or recorded.resolve() == Path(config.data).resolve():
        return None
    if not (recorded / "meta.json").is_file():
        print(f"no original-domain evaluation: {recorded}, the data of {config.init_from}, is not here")
        return None
    original = TokenShards(recorded, "val")
    if original.meta.get("tokenizer_fingerprint") != tokenizer.fingerprint() or not len(original):
        return None
    return original


def _batches(
    config: PretrainConfig, train_shards: TokenShards, seq_len: int, world: World
) -> BatchLoader | ReplayLoader:
    where = {"seed": config.seed, "rank": world.rank, "world_size": world.size}
    if not config.replay_fraction:
        return BatchLoader(train_shards, config.batch_size, seq_len, **where)
    replay = TokenShards(config.replay_data, "train")
    return ReplayLoader(
        train_shards, replay, config.batch_size, seq_len, replay_fraction=config.replay_fraction, **where
    )


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
    if config.resume and not config.init_from and (run_dir / "config.json").is_file():
        # a continued run resumed without --init-from is still one: keep the record and the evaluation
        saved_train = json.loads((run_dir / "config.json").read_text()).get("train", {})
        config = dataclasses.replace(config, init_from=saved_train.get("init_from", ""))
    if config.init_from and run_dir.resolve() == Path(config.init_from).resolve():
        raise ConfigError(f"--out {run_dir} is the --init-from run; write the continued run elsewhere")

    train_shards, val_shards, tokenizer = load_data(config)
    original_val = original_val_shards(config, tokenizer, tokenizer_dir(config, train_shards))
    model_config = _setup_model_config(config, tokenizer, run_dir)
    seq_len = config.seq_len or model_config.context_length
    if seq_len > model_config.context_length:
        raise ConfigError(
            f"--seq-len {seq_len} exceeds the model's context length {model_config.context_length}"
        )
    if device.type == "cuda":  # TF32 matmuls and convolutions: float32 training at tensor-core speed
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if config.init_from and not config.resume:  # continued pretraining: the run's weights (safetensors)
        plain = load_model(config.init_from, device=device)
    else:  # resumed runs take their weights from the checkpoint
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
    batches = _batches(config, train_shards, seq_len, world)
    loader = PrefetchLoader(
        batches, pin_memory=device.type == "cuda"
    )  # the next batches, assembled meanwhile
    state = TrainState()
    if config.resume:
        state, checkpoint = resume_training(run_dir, model=model, optimizer=optimizer, data=loader)
        if world.is_main:
            print(f"resuming from {checkpoint} (step {state.step}, {state.tokens:,} tokens)")
    elif world.is_main:
        _write_run_files(run_dir, config, model_config, tokenizer)

    token_bytes = torch.from_numpy(tokenizer.token_byte_lengths().astype("int64"))
    token_bytes = torch.nn.functional.pad(token_bytes, (0, model_config.vocab_size - len(token_bytes)))

    def run_eval(final: bool) -> dict[str, float]:
        limit = None if final or config.eval_batches == 0 else config.eval_batches

        def on(shards: TokenShards) -> dict[str, float]:
            batches = iter_eval_batches(shards, config.batch_size, seq_len, max_batches=limit)
            # every rank runs it (FSDP needs all of them in each forward); they all see the same batches
            return evaluate(
                unwrap(model), batches, token_bytes, device=device, autocast_dtype=config.autocast_dtype
            )

        result = on(val_shards)
        if original_val is not None:  # logged as val_loss_original / val_bpb_original: forgetting
            original = on(original_val)
            result |= {"loss_original": original["loss"], "bpb_original": original["bpb"]}
        return result

    def run_sample() -> str:
        return sample_text(plain, tokenizer, config.sample_prompt, device=device)

    n_params = plain.num_parameters()
    per_token = flops_per_token(model_config, seq_len)
    dtype = config.autocast_dtype or torch.float32
    peak = config.peak_tflops * 1e12 or world.size * measure_peak_flops(dtype, device, seconds=1.0)
    if world.is_main:
        if config.init_from and not config.resume:
            print(f"continued pretraining: weights, shape and tokenizer of {config.init_from}")
        where = f"{world.size} processes ({world.mode}), " if world.distributed else ""
        print(
            f"model: {n_params / 1e6:.2f}M parameters, {model_config.num_layers} layers, "
            f"dim {model_config.dim}, context {model_config.context_length} | "
            f"data: {len(train_shards):,} train tokens | "
            f"{where}device {device}, {threads} threads, {config.dtype} | "
            f"peak {peak / 1e12:.2f} TFLOP/s (measured matmul), {per_token / 1e6:.1f} MFLOP per token"
        )
    if not config.resume and (config.init_from or original_val is not None):
        _log_initial_eval(run_dir, run_eval(True), world)  # the "before" of continued pretraining
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
        original_val,
    )


def _log_initial_eval(run_dir: Path, result: dict[str, float], world: World) -> None:
    """Record the whole-split evaluation of the initial weights as step 0 of a fresh metrics.jsonl."""
    if not world.is_main:
        return
    log = MetricsLog(run_dir / "metrics.jsonl", truncate_after_step=-1)
    log.log({"step": 0, "tokens": 0, "val_final": True} | {f"val_{k}": v for k, v in result.items()})
    log.close()
    message = f"step 0 (initial weights): val loss {result['loss']:.4f}, val bits/byte {result['bpb']:.4f}"
    if "bpb_original" in result:
        message += f", original domain bits/byte {result['bpb_original']:.4f}"
    print(message)


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
    original_val: TokenShards | None,
) -> dict[str, Any]:
    metrics = read_metrics(run_dir / "metrics.jsonl")
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
        "mfu": model_flops_utilization(per_token, state.tokens / max(state.elapsed_s, 1e-9), peak),
        "val_loss": final_eval["val_loss"],
        "val_bpb": final_eval["val_bpb"],
        "unigram_bpb": unigram,
        "val_tokens": final_eval.get("val_tokens"),
        "samples": samples,
        "hardware": hardware(next(model.parameters()).device, threads, processes, peak),
    }
    if config.init_from:
        summary["init_from"] = config.init_from
    if original_val is not None and "val_bpb_original" in final_eval:
        initial = next((r for r in metrics if r.get("step") == 0 and "val_bpb_original" in r), {})
        summary["val_loss_original"] = final_eval["val_loss_original"]
        summary["val_bpb_original"] = final_eval["val_bpb_original"]
        summary["original_domain"] = {
            "data": str(original_val.directory),
            "bpb_before": initial.get("val_bpb_original"),
            "bpb_after": final_eval["val_bpb_original"],
        }
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": state.step, "unigram_bpb": unigram}) + "\n")
    write_json(run_dir / "summary.json", summary)
    plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png", title=f"pretraining · {run_dir.name}")
    write_report(
        run_dir, summary, {"model": to_dict(model.config), "train": to_dict(config)}, Path(config.data)
    )
    print(f"val bits/byte {summary['val_bpb']:.4f} (unigram baseline {unigram:.4f}) → {run_dir}")
    if "original_domain" in summary:
        domain = summary["original_domain"]
        before = "?" if domain["bpb_before"] is None else f"{domain['bpb_before']:.4f}"
        print(f"original domain bits/byte {before} before → {domain['bpb_after']:.4f} after")
    return summary
