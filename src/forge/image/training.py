"""What the small image models (VAE, GAN) share when training: options, run directory, data, checkpoints,
metrics and the loop itself.

    while step < max_steps and time is left:
        metrics = train_step()            # the model's own update(s): one VAE step, or a D and a G step
        log every N steps · sample grid every N steps · checkpoint every N steps

It mirrors the conveniences of `forge.train.loop` (which the `image` layer may not import): a tqdm bar with
ETA, `metrics.jsonl`, `loss.png`, checkpoints written atomically (temporary directory + rename, the
`latest` pointer last) holding every module, optimizer and the RNG state as safetensors (nothing is
pickled), exact resume, and Ctrl-C that saves a checkpoint before returning.
"""

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from forge.data.images import ImageDataConfig, ImageSet, load_images, prepare_images
from forge.errors import CheckpointError, ConfigError, DataError
from forge.image.text_encoder import KINDS as TEXT_ENCODERS
from forge.io import atomic_dir, write_json, write_text, write_with
from forge.runtime import resolve_device, seed_everything, set_threads

SEPARATOR = "::"  # optimizer tensors are saved as 'optimizer::param_index::key'


@dataclass(frozen=True, kw_only=True)
class ImageTrainConfig:
    """Options every small image model trains with: data, run directory, text encoder, schedule."""

    data: str = "data/images"
    """directory written by `forge data images` (its train split trains, its val split is held out), or
    'digits' to prepare the built-in digits into RUN/data"""
    out: str = "runs/image"
    """run directory to write"""
    resume: bool = False
    """continue the run in --out from its newest checkpoint"""
    text_encoder: str = "minilm"
    """minilm (frozen all-MiniLM-L6-v2 + trained projection) or small (a byte transformer trained jointly)"""
    cond_dim: int = 64
    """width of the caption embedding"""
    width: int = 32
    """channels of the first convolution stage (doubled per stage, at most 4×)"""
    batch_size: int = 64
    """images per step"""
    max_steps: int = 200
    """optimizer steps to train for"""
    max_minutes: float = 0.0
    """wall-clock budget in minutes (0 = none); training stops at whichever of steps or time ends first"""
    lr: float = 2e-3
    """Adam learning rate"""
    log_every: int = 20
    """log the losses every N steps"""
    sample_every: int = 100
    """write a sample grid samples/step-N.png every N steps (0 = only at the end)"""
    checkpoint_every: int = 100
    """save a resumable checkpoint every N steps (0 = only at the end)"""
    keep_checkpoints: int = 2
    """keep only the newest N checkpoints (0 = keep all)"""
    seed: int = 0
    """seed for initialisation, data order and noise"""
    threads: int = 0
    """CPU threads for torch (0 = the cores this process may use)"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps"""
    progress: bool = True
    """show a progress bar"""

    def __post_init__(self) -> None:
        for name in ("cond_dim", "width", "batch_size", "max_steps", "log_every"):
            at_least(self, name, 1)
        for name in ("sample_every", "checkpoint_every", "keep_checkpoints", "threads"):
            at_least(self, name, 0)
        if not self.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.max_minutes < 0:
            raise ConfigError(f"--max-minutes must be 0 (no limit) or positive, got {self.max_minutes}")
        if self.text_encoder not in TEXT_ENCODERS:
            raise ConfigError(
                f"--text-encoder must be one of {', '.join(TEXT_ENCODERS)}, got {self.text_encoder!r}"
            )


def at_least(config: Any, name: str, low: float) -> None:
    """Raise a ConfigError naming the flag if `config.name` is below `low`."""
    if getattr(config, name) < low:
        raise ConfigError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(config, name)}")


def stages(size: int) -> int:
    """Number of ×2 resolution stages between size × size and the 4×4 bottleneck (size = 4·2^k, k ≥ 1)."""
    k = round(math.log2(size / 4)) if size >= 8 else 0
    if size < 8 or 4 * 2**k != size:
        raise DataError(
            f"image size {size} is not supported: use 8, 16, 32 or 64 (`forge data images --size`)"
        )
    return k


def stage_channels(width: int, k: int) -> list[int]:
    """Channels at full resolution, then after each of the k stages (doubling, at most 4·width)."""
    return [width * min(2**i, 4) for i in range(k + 1)]


# ---- run directory and data -------------------------------------------------------------------------


def open_image_run(config: ImageTrainConfig) -> tuple[Path, torch.device]:
    """Set threads, device and seed; check that --out is free (or, with --resume, holds a run)."""
    set_threads(config.threads or None)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    run_dir = Path(config.out)
    has_run = (run_dir / "checkpoints" / "latest").is_file()
    if has_run and not config.resume:
        raise ConfigError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
        )
    if config.resume and not has_run:
        raise CheckpointError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}; drop --resume to start")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, device


def load_splits(data: str, run_dir: Path, *, seed: int = 0) -> tuple[ImageSet, ImageSet | None]:
    """The train split of a prepared image directory and its val split (None when empty or absent);
    `data` 'digits' prepares the built-in digits into RUN/data first (once)."""
    if data == "digits":
        data = str(run_dir / "data")
        if not (Path(data) / "manifest.json").is_file():
            prepare_images(ImageDataConfig(out=data, seed=seed))
    train = load_images(data, "train")
    if len(train) == 0:
        raise DataError(f"{data}: the train split is empty; prepare more images with `forge data images`")
    try:
        val: ImageSet | None = load_images(data, "val")
    except ConfigError:
        val = None
    return train, (val if val is not None and len(val) > 0 else None)


def digit_labels_known(images: ImageSet) -> bool:
    """Whether every image carries a digit label 0..9 (the yardstick can then judge the run)."""
    labels = images.labels
    return len(labels) > 0 and int(labels.min()) >= 0 and int(labels.max()) <= 9


def grid_prompts(images: ImageSet, rows: int = 10) -> list[str]:
    """One caption per grid row: for labelled data the first caption of each label, else the first
    distinct captions."""
    chosen: dict[int | str, str] = {}
    for caption, label in zip(images.captions, images.labels.tolist(), strict=True):
        key: int | str = label if label >= 0 else caption
        chosen.setdefault(key, caption)
        if len(chosen) == rows:
            break
    if all(isinstance(k, int) for k in chosen):
        return [chosen[k] for k in sorted(chosen, key=int)]
    return list(chosen.values())


def save_weights(path: Path, module: nn.Module) -> None:
    """Write a module's state dict as safetensors, atomically."""
    weights = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    write_with(path, lambda tmp: save_file(weights, str(tmp)))


def load_weights(path: Path, module: nn.Module) -> None:
    """Load safetensors weights into `module`; a CheckpointError names the file when they do not fit."""
    if not path.is_file():
        raise CheckpointError(f"{path} not found: the run has not finished or is not a forge image run")
    try:
        module.load_state_dict(load_file(str(path)))
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the weights do not fit the model in config.json ({e})") from e


# ---- checkpoints ------------------------------------------------------------------------------------


def save_checkpoint(
    run_dir: Path, step: int, parts: dict[str, nn.Module | torch.optim.Optimizer], state: dict[str, Any],
    keep: int,
) -> None:  # fmt: skip
    """Write checkpoints/step-N/ (modules, optimizers, RNG, state.json) atomically, then point `latest`
    at it and prune all but the newest `keep`."""
    weights: dict[str, torch.Tensor] = {}
    optim: dict[str, torch.Tensor] = {}
    groups: dict[str, Any] = {}
    for name, part in parts.items():
        if isinstance(part, nn.Module):
            weights.update(
                {f"{name}.{k}": v.detach().cpu().contiguous() for k, v in part.state_dict().items()}
            )
            continue
        saved = part.state_dict()
        groups[name] = saved["param_groups"]
        for index, param_state in saved["state"].items():
            for key, value in param_state.items():
                optim[f"{name}{SEPARATOR}{index}{SEPARATOR}{key}"] = value.detach().cpu().contiguous()
    final = run_dir / "checkpoints" / f"step-{step:07d}"
    with atomic_dir(final) as tmp:
        save_file(weights, str(tmp / "model.safetensors"))
        save_file(optim, str(tmp / "optimizer.safetensors"))
        save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
        write_json(tmp / "optimizer_groups.json", groups)
        write_json(tmp / "state.json", {"step": step, **state})
    write_text(run_dir / "checkpoints" / "latest", final.name + "\n")
    if keep > 0:
        for old in sorted((run_dir / "checkpoints").glob("step-*"))[:-keep]:
            if old.is_dir() and old != final:
                for file in old.iterdir():
                    file.unlink()
                old.rmdir()


def load_checkpoint(run_dir: Path, parts: dict[str, nn.Module | torch.optim.Optimizer]) -> dict[str, Any]:
    """Restore modules, optimizers and the RNG from the checkpoint `latest` names; return its state."""
    path = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    try:
        weights = load_file(str(path / "model.safetensors"))
        optim = load_file(str(path / "optimizer.safetensors"))
        groups = json.loads((path / "optimizer_groups.json").read_text())
        state = json.loads((path / "state.json").read_text())
        rng = load_file(str(path / "rng.safetensors"))["torch"]
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"{path}: damaged checkpoint ({e}); delete it to resume from an earlier one"
        ) from e
    for name, part in parts.items():
        if isinstance(part, nn.Module):
            prefix = f"{name}."
            own = {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
            try:
                part.load_state_dict(own)
            except RuntimeError as e:
                raise CheckpointError(f"{path}: the checkpoint does not fit this model ({e}); resume with "
                                      "the same model options the run was started with") from e  # fmt: skip
            continue
        optim_state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in optim.items():
            owner, index, field = key.split(SEPARATOR)
            if owner == name:
                optim_state.setdefault(int(index), {})[field] = value
        part.load_state_dict({"state": optim_state, "param_groups": groups[name]})
    torch.set_rng_state(rng)
    return state


# ---- metrics ------------------------------------------------------------------------------------------


class Metrics:
    """Append-only metrics.jsonl; on resume, records after the checkpoint's step are dropped."""

    def __init__(self, path: Path, *, after_step: int) -> None:
        self.path = path
        kept = [r for r in read_metrics(path) if r.get("step", 0) <= after_step] if path.exists() else []
        write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def log(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl, skipping a torn last line."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_metrics(run_dir: Path, keys: tuple[str, ...], title: str) -> None:
    """Draw each logged quantity in `keys` against the step, one panel each, as loss.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir / "metrics.jsonl")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            ax.plot(*zip(*points, strict=True), color="#4c72b0", lw=1.2)
        ax.set(xlabel="step", title=key)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    write_with(run_dir / "loss.png", lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


# ---- the loop -----------------------------------------------------------------------------------------


def fit(
    config: ImageTrainConfig,
    run_dir: Path,
    parts: dict[str, nn.Module | torch.optim.Optimizer],
    train_step: Callable[[int], dict[str, torch.Tensor]],
    snapshot: Callable[[int], None],
) -> dict[str, Any]:
    """Run `train_step(step)` until --max-steps or --max-minutes, logging, sampling (`snapshot(step)`)
    and checkpointing when due; resumes from the newest checkpoint with --resume. Returns the step
    reached, the minutes spent (all sessions) and whether Ctrl-C stopped it."""
    state = load_checkpoint(run_dir, parts) if config.resume else {"step": 0, "elapsed_s": 0.0}
    step, elapsed = int(state["step"]), float(state["elapsed_s"])
    log = Metrics(run_dir / "metrics.jsonl", after_step=step)
    bar = tqdm(
        total=config.max_steps, initial=step, unit="step", disable=not config.progress, dynamic_ncols=True
    )
    sums: dict[str, torch.Tensor] = {}
    window = 0  # steps summed in `sums`

    def checkpoint() -> None:
        save_checkpoint(run_dir, step, parts, {"elapsed_s": elapsed}, config.keep_checkpoints)

    def due(every: int) -> bool:
        return every > 0 and step % every == 0

    interrupted = False
    try:
        while step < config.max_steps and not (config.max_minutes and elapsed >= 60 * config.max_minutes):
            start = time.perf_counter()
            for key, value in train_step(step).items():
                sums[key] = sums.get(key, torch.zeros(())) + value.detach().float().cpu()
            step, window = step + 1, window + 1
            elapsed += time.perf_counter() - start
            bar.update(1)
            if due(config.log_every) or step == config.max_steps:
                record = {k: round(v.item() / window, 5) for k, v in sums.items()}
                if not all(math.isfinite(v) for v in record.values()):
                    raise FloatingPointError(f"losses became {record} at step {step}; lower --lr")
                log.log({"step": step, **record, "elapsed_s": round(elapsed, 2)})
                bar.set_postfix_str(" ".join(f"{k} {v:.3g}" for k, v in record.items()), refresh=False)
                sums.clear()
                window = 0
            if due(config.sample_every):
                snapshot(step)
            if due(config.checkpoint_every):
                checkpoint()
    except KeyboardInterrupt:
        interrupted = True
        bar.write(f"interrupted at step {step}: saving a checkpoint; continue with --resume")
    finally:
        bar.close()
        log.close()
    checkpoint()
    return {"steps": step, "train_minutes": round(elapsed / 60, 3), "interrupted": interrupted}


def judge(generator: Any, train: ImageSet, val: ImageSet | None, **options: Any) -> dict[str, Any]:
    """For labelled digits: the yardstick's verdict on `generator` with held-out caption wording
    (conditioning accuracy, Fréchet ratio, per-class coverage); {} for other data."""
    if val is None or not (digit_labels_known(train) and digit_labels_known(val)):
        return {}
    from forge.image.evaluate import Yardstick, evaluate_generator

    scores = evaluate_generator(generator, Yardstick.from_images(train, val), **options)
    keep = ("conditioning_accuracy", "per_class_accuracy", "frechet_ratio", "coverage", "class_counts")
    return {"held_out_wording": {k: scores[k] for k in keep}}
