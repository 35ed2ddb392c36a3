"""Load any image run directory by the kind recorded in its `config.json`.

Each model module (diffusion, vae, gan) loads its own runs; this module only reads `"kind"` and
dispatches, importing the model module lazily so that loading a GAN never imports diffusers.
"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from forge.errors import CheckpointError

KINDS = ("diffusion", "vae", "gan")


class ImageGenerator(Protocol):
    """What every loaded image run offers: `generate(prompts, *, seed=0, **options)` → images
    (B, C, H, W) in [-1, 1], one per prompt, deterministic for a seed. The options differ per model
    (diffusion: steps, guidance, scheduler; VAE: temperature), hence the loose signature."""

    @property
    def generate(self) -> Callable[..., torch.Tensor]:
        """The model's `generate` method."""
        ...


def read_run_config(run_dir: str | Path, expected: str | None = None) -> dict[str, Any]:
    """The `config.json` of an image run (of kind `expected`, when given); a CheckpointError says what is
    wrong and how to make one."""
    path = Path(run_dir) / "config.json"
    how = "train one with `forge image train --model diffusion|vae|gan --out DIR`"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not an image run directory: {path} not found; {how}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} cannot be read ({e}); {how}") from e
    kind = config.get("kind") if isinstance(config, dict) else None
    if kind not in KINDS:
        raise CheckpointError(
            f"{path} has kind {kind!r}, not one of {', '.join(KINDS)}: {run_dir} is not an image run; {how}"
        )
    if expected is not None and kind != expected:
        raise CheckpointError(f"{path}: {run_dir} is a {kind} run, not a {expected} run")
    return config


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    """The run's `summary.json` (written when training ends), or {} when there is none yet."""
    path = Path(run_dir) / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return summary if isinstance(summary, dict) else {}


def run_kind(run_dir: str | Path) -> str:
    """'diffusion', 'vae' or 'gan'."""
    return str(read_run_config(run_dir)["kind"])


def load_generator(run_dir: str | Path, device: str = "cpu") -> ImageGenerator:
    """Load the image run in `run_dir` (diffusion, VAE or GAN) ready to `generate`."""
    kind = run_kind(run_dir)
    if kind == "diffusion":
        from forge.image.diffusion import load_diffusion

        return load_diffusion(run_dir, device=device)
    if kind == "vae":
        from forge.image.vae import load_vae

        return load_vae(run_dir, device=device)
    from forge.image.gan import load_gan

    return load_gan(run_dir, device=device)
