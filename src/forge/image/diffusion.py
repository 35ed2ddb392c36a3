"""Text-to-image diffusion: a conditional diffusers UNet, trained with classifier-free guidance, sampled by
the diffusers schedulers; trained by the image training loop (`forge.image.training.fit`).

    caption ─ TextEncoder ─ c (cond_dim) ─┬─ class embedding: added to the timestep embedding (every ResNet)
                                          └─ cross-attention context (B, 1, cond_dim) at the lowest level
    x_0 ─ DDPMScheduler.add_noise ─ x_t ─ UNet2DConditionModel(x_t, t, c) ─ ε̂ or v̂ ─ MSE to ε or v

Design choices:
- `UNet2DConditionModel` with the caption embedding both as its class embedding ("projection": an MLP
  into the timestep embedding, so every ResNet block is scaled and shifted by it) and as a one-token
  cross-attention context in the lowest-resolution blocks. On 8×8 digits the global class-embedding path
  does most of the work and costs almost nothing; the cross-attention blocks at 4×4 keep the model the
  standard text-to-image UNet that diffusers loads and that longer (multi-token) contexts would need;
- schedulers, noising, guidance and the sampling loop live in `forge.image.schedulers`; the noise is a
  cosine ("squaredcos_cap_v2") DDPM schedule by default, better than linear for small images (Nichol &
  Dhariwal 2021, §3.2);
- classifier-free guidance: a caption is replaced by "" with probability `--uncond-prob` in training, so
  one network learns both branches (Ho & Salimans 2022);
- EMA of the UNet and the text encoder's trainable weights (decay min(d, (1+n)/(10+n)), as diffusers'
  EMAModel), kept in the same module so checkpoints carry it and resume is exact; sampling uses it;
- for labelled digits (`--recaption`), every time an image is drawn it gets a fresh caption in a training
  wording, so the projection sees each digit in every training phrasing;
- the run directory is in diffusers' layout: `unet/` (save_pretrained, safetensors) and `scheduler/`
  (the DDIM sampler's config) load with `UNet2DConditionModel.from_pretrained` and
  `DDIMScheduler.from_pretrained`; `text_encoder/` holds the projection (safetensors + config).
"""

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DConditionModel  # untyped for mypy: `Any` in signatures
from torch import nn

from forge.data.images import DIGIT_WORDS, TRAIN_TEMPLATES, ImageSet
from forge.errors import CheckpointError, ConfigError
from forge.image.grids import save_grid
from forge.image.schedulers import (
    Denoiser,
    check_noise_options,
    noised,
    sample_loop,
    sampling_scheduler,
    training_scheduler,
)
from forge.image.text_encoder import TextEncoder
from forge.image.training import (
    ImageTrainConfig,
    at_least,
    digit_labels_known,
    fit,
    grid_prompts,
    judge,
    load_splits,
    open_image_run,
    plot_metrics,
)
from forge.io import write_json
from forge.runtime import resolve_device


@dataclass(frozen=True, kw_only=True)
class DiffusionConfig(ImageTrainConfig):
    """Options of `forge image train --model diffusion`: the image training options, plus UNet and noise."""

    out: str = "runs/diffusion"
    """run directory to write"""
    width: int = 32
    """channels of the UNet's first level (a multiple of 8); each next level doubles it"""
    levels: int = 2
    """resolution levels of the UNet (each but the last halves the side: size / 2**(levels-1) ≥ 2)"""
    layers_per_block: int = 1
    """ResNet layers per UNet level"""
    attention: bool = True
    """cross-attention to the caption embedding (and self-attention) in the lowest level and the middle;
    off: the caption conditions through the class embedding alone"""
    beta_schedule: str = "cosine"
    """noise schedule: cosine (squaredcos_cap_v2) or linear"""
    prediction: str = "epsilon"
    """what the UNet predicts: epsilon (the noise) or v_prediction (v = α ε − σ x_0)"""
    uncond_prob: float = 0.1
    """probability of training on the empty caption (classifier-free guidance's unconditional branch)"""
    ema_decay: float = 0.999
    """decay of the exponential moving average of the weights that sampling uses (0 = the live weights)"""
    recaption: bool = True
    """labelled digits: draw a fresh training-wording caption each time an image is used"""
    batch_size: int = 128
    """images per step"""
    max_steps: int = 4000
    """optimizer steps to train for"""
    lr: float = 2e-3
    """peak AdamW learning rate"""
    warmup_steps: int = 100
    """steps of linear warmup, then cosine decay to --min-lr-ratio × --lr"""
    min_lr_ratio: float = 0.1
    """final learning rate as a fraction of the peak"""
    grad_clip: float = 1.0
    """clip the global gradient norm to this (0 = off)"""
    log_every: int = 50
    """log the loss every N steps"""
    sample_every: int = 1000
    """write a sample grid samples/step-N.png every N steps (0 = only at the end)"""
    checkpoint_every: int = 500
    """save a resumable checkpoint every N steps (0 = only at the end)"""
    sample_steps: int = 50
    """DDIM steps of the sample grids written during training"""
    sample_guidance: float = 3.0
    """guidance scale of the sample grids written during training"""
    eval_steps: int = 50
    """DDIM steps of the final held-out-wording evaluation at guidance 3 (labelled digits; 0 = skip)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.width % 8:
            raise ConfigError(f"--width must be a multiple of 8, got {self.width}")
        for name in ("levels", "layers_per_block", "sample_steps"):
            at_least(self, name, 1)
        at_least(self, "warmup_steps", 0)
        at_least(self, "eval_steps", 0)
        check_noise_options(self.beta_schedule, self.prediction)
        if not 0 <= self.uncond_prob < 1:
            raise ConfigError(f"--uncond-prob must be in [0, 1), got {self.uncond_prob}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"--min-lr-ratio must be between 0 and 1, got {self.min_lr_ratio}")
        if self.grad_clip < 0 or self.sample_guidance < 0:
            raise ConfigError("--grad-clip and --sample-guidance must be 0 or more")


# ---- model --------------------------------------------------------------------------------------------


def build_unet(config: DiffusionConfig, channels: int, size: int) -> Any:
    """The conditional UNet: ResNet levels, with cross-attention at the lowest one and in the middle."""
    if size % 2 ** (config.levels - 1) or size // 2 ** (config.levels - 1) < 2:
        raise ConfigError(f"--levels {config.levels} halves {size}×{size} images too often; use fewer levels")
    down = ["DownBlock2D"] * config.levels
    if config.attention:
        down[-1] = "CrossAttnDownBlock2D"
    return UNet2DConditionModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(config.width * 2**i for i in range(config.levels)),
        layers_per_block=config.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(b.replace("Down", "Up") for b in reversed(down)),
        mid_block_type="UNetMidBlock2DCrossAttn" if config.attention else "UNetMidBlock2D",
        norm_num_groups=8,
        cross_attention_dim=config.cond_dim,
        attention_head_dim=4,  # diffusers' name for the number of heads here
        class_embed_type="projection",
        projection_class_embeddings_input_dim=config.cond_dim,
        resnet_time_scale_shift="scale_shift",
    )


def unet_denoiser(unet: Any) -> Denoiser:
    """(x_t, t, c) → the UNet's prediction, with c as class embedding and one-token context."""

    def denoise(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return unet(x, t, encoder_hidden_states=cond[:, None], class_labels=cond).sample

    return denoise


class DiffusionModel(nn.Module):
    """The trained parts (UNet, text encoder) and their EMA copies, checkpointed together."""

    ema_updates: torch.Tensor

    def __init__(self, unet: Any, text_encoder: TextEncoder, ema_decay: float) -> None:
        super().__init__()
        self.unet, self.text_encoder, self.ema_decay = unet, text_encoder, ema_decay
        self.ema_unet = copy.deepcopy(unet).requires_grad_(False)
        self.ema_text_encoder = copy.deepcopy(text_encoder).requires_grad_(False)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update_ema(self) -> None:
        """Move the EMA weights towards the live ones (call after every optimizer step)."""
        n = int(self.ema_updates)
        decay = min(self.ema_decay, (1 + n) / (10 + n))
        live = [*self.unet.parameters(), *self.text_encoder.parameters()]
        ema = [*self.ema_unet.parameters(), *self.ema_text_encoder.parameters()]
        torch._foreach_lerp_(ema, live, 1 - decay)
        self.ema_updates.add_(1)

    def loss(
        self, scheduler: Any, images: torch.Tensor, captions: list[str], uncond_prob: float
    ) -> torch.Tensor:
        """Denoising MSE of `images` (B, C, H, W) at random timesteps, captions dropped with `uncond_prob`."""
        drop = (torch.rand(len(captions)) < uncond_prob).tolist()
        cond = self.text_encoder(["" if d else c for c, d in zip(captions, drop, strict=True)])  # (B, D)
        noise = torch.randn_like(images)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(images),), device=images.device)
        noisy, target = noised(scheduler, images, noise, t)
        return F.mse_loss(unet_denoiser(self.unet)(noisy, t, cond), target)


# ---- sampling -----------------------------------------------------------------------------------------


class DiffusionGenerator:
    """A trained text-to-image diffusion model: `generate(prompts, seed=..., steps=..., guidance=...)`."""

    def __init__(self, unet: Any, text_encoder: TextEncoder, scheduler_config: dict) -> None:
        self.unet, self.text_encoder = unet.eval(), text_encoder.eval()
        self.scheduler_config = dict(scheduler_config)
        self.device = unet.device

    @torch.no_grad()
    def generate(
        self, prompts: list[str], *, seed: int = 0, steps: int = 50, guidance: float = 3.0,
        scheduler: str = "ddim", progression: list[int] | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """Images (B, C, H, W) in [-1, 1] for `prompts`, the same for the same seed.

        With `progression` (step numbers, 0 = the starting noise, `steps` = the end) it returns the
        denoising strip instead: (B, len(progression), C, H, W), the x_t after each listed step.
        """
        if steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {steps}")
        if guidance < 0:
            raise ConfigError(f"--guidance must be 0 or more, got {guidance}")
        if progression is not None and any(not 0 <= s <= steps for s in progression):
            raise ConfigError(f"--progression steps must lie in 0..{steps}, got {progression}")
        sampler = sampling_scheduler(scheduler, self.scheduler_config)
        config = self.unet.config
        generator = torch.Generator().manual_seed(seed)
        shape = (len(prompts), config.in_channels, config.sample_size, config.sample_size)
        noise = torch.randn(shape, generator=generator).to(self.device)  # (B, C, H, W)
        cond = self.text_encoder(prompts)  # (B, D)
        uncond = self.text_encoder([""] * len(prompts))
        images, frames = sample_loop(
            unet_denoiser(self.unet), sampler, noise=noise, cond=cond, uncond=uncond, guidance=guidance,
            steps=steps, generator=generator, progression=progression,
        )  # fmt: skip
        if progression is not None:
            order = sorted(set(progression))
            return torch.stack([frames[order.index(s)] for s in progression], 1).clamp(-1, 1)
        return images.clamp(-1, 1)


def save_diffusion(run_dir: str | Path, model: DiffusionModel, scheduler_config: dict) -> None:
    """Write the EMA weights in diffusers' layout: RUN/unet, RUN/scheduler, RUN/text_encoder."""
    run_dir = Path(run_dir)
    model.ema_unet.save_pretrained(run_dir / "unet", safe_serialization=True)
    sampling_scheduler("ddim", scheduler_config).save_pretrained(run_dir / "scheduler")
    model.ema_text_encoder.save(run_dir / "text_encoder")


def load_diffusion(run_dir: str | Path, device: str = "cpu") -> DiffusionGenerator:
    """The generator of a run directory written by `train_diffusion`."""
    run_dir = Path(run_dir)
    if not (run_dir / "unet" / "config.json").is_file():
        raise CheckpointError(
            f"{run_dir} holds no trained diffusion model (unet/ is missing); train one with "
            "`forge image train --model diffusion`, or --resume an interrupted run"
        )
    where = resolve_device(device)
    try:  # safetensors only: a run directory is never unpickled
        unet = UNet2DConditionModel.from_pretrained(
            run_dir / "unet",
            use_safetensors=True,
            low_cpu_mem_usage=False,  # no `accelerate` needed
        ).to(where)
        scheduler = DDIMScheduler.from_pretrained(run_dir / "scheduler")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{run_dir}: the diffusion model cannot be loaded ({e})") from e
    text_encoder = TextEncoder.load(run_dir / "text_encoder", device=where)
    return DiffusionGenerator(unet, text_encoder, dict(scheduler.config))


# ---- training -----------------------------------------------------------------------------------------


def learning_rate(config: DiffusionConfig, step: int) -> float:
    """Linear warmup to --lr, then cosine decay to --min-lr-ratio × --lr at --max-steps."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
    return config.lr * (
        config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    )


def caption_sampler(train: ImageSet, recaption: bool) -> Callable[[torch.Tensor], list[str]]:
    """Captions for a batch of image indices: the stored ones, or (labelled digits with `recaption`) a
    fresh training wording per image, drawn from torch's RNG so that resume is exact."""
    if not (recaption and digit_labels_known(train)):
        return lambda index: [train.captions[i] for i in index.tolist()]

    def fresh(index: torch.Tensor) -> list[str]:
        wording = torch.randint(len(TRAIN_TEMPLATES), (len(index),)).tolist()
        words = [DIGIT_WORDS[int(label)] for label in train.labels[index]]
        return [TRAIN_TEMPLATES[k].format(word=w) for k, w in zip(wording, words, strict=True)]

    return fresh


@torch.no_grad()
def validation_loss(
    model: DiffusionModel, scheduler: Any, val: ImageSet | None, device: torch.device
) -> float:
    """Denoising loss of the live weights on the validation images, with fixed noise and timesteps."""
    if val is None:
        return math.nan
    state = torch.get_rng_state()
    torch.manual_seed(0)  # the same noise every time; the training RNG is put back after
    model.eval()
    try:
        losses = [
            model.loss(scheduler, val.images[i : i + 256].to(device), val.captions[i : i + 256], 0.0).item()
            for i in range(0, len(val), 256)
        ]
    finally:
        model.train()
        torch.set_rng_state(state)
    return float(np.mean(losses))


def train_diffusion(config: DiffusionConfig) -> dict[str, Any]:
    """Train a text-conditioned diffusion model; write the run directory and return the summary."""
    run_dir, device = open_image_run(config)
    train, val = load_splits(config.data, run_dir, seed=config.seed)
    channels, size = train.images.shape[1], train.images.shape[-1]
    scheduler = training_scheduler(beta_schedule=config.beta_schedule, prediction_type=config.prediction)
    text_encoder = TextEncoder(config.text_encoder, config.cond_dim)
    model = DiffusionModel(build_unet(config, channels, size), text_encoder, config.ema_decay).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=0.0)
    config_json = {
        "kind": "diffusion",
        "config": asdict(config),
        "image": {"channels": channels, "size": size},
    }
    write_json(run_dir / "config.json", config_json)
    images, captions_for = train.images.to(device), caption_sampler(train, config.recaption)
    prompts = diffusion_grid_prompts(train, config.recaption)
    generator = DiffusionGenerator(model.ema_unet, model.ema_text_encoder, dict(scheduler.config))

    def train_step(step: int) -> dict[str, torch.Tensor]:
        index = torch.randint(len(train), (config.batch_size,))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        loss = model.loss(scheduler, images[index.to(device)], captions_for(index), config.uncond_prob)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        model.update_ema()
        return {"loss": loss}

    def snapshot(step: int) -> None:
        grid = generator.generate(
            [p for p in prompts for _ in range(8)], seed=0, steps=config.sample_steps,
            guidance=config.sample_guidance,
        )  # fmt: skip
        model.train()
        save_grid(grid, run_dir / "samples" / f"step-{step}.png", nrow=8, labels=prompts)

    result = fit(config, run_dir, {"model": model, "optimizer": optimizer}, train_step, snapshot)
    snapshot(result["steps"])
    save_diffusion(run_dir, model, dict(scheduler.config))
    plot_metrics(run_dir, ("loss",), f"diffusion · run {run_dir.name}")
    write_pictures(generator, run_dir, prompts, config.sample_steps)
    judged = judge(generator, train, val, steps=config.eval_steps, guidance=3.0) if config.eval_steps else {}
    summary = {
        "kind": "diffusion", **result, "val_loss": validation_loss(model, scheduler, val, device),
        "unet_parameters": sum(p.numel() for p in model.unet.parameters()), **judged,
    }  # fmt: skip
    write_json(run_dir / "summary.json", summary)
    return summary


def diffusion_grid_prompts(train: ImageSet, recaption: bool) -> list[str]:
    """One prompt per grid row: 'a handwritten zero' … 'nine' for labelled digits, else the captions'."""
    if recaption and digit_labels_known(train):
        return [f"a handwritten {word}" for word in DIGIT_WORDS]
    return grid_prompts(train)


def write_pictures(generator: "DiffusionGenerator", run_dir: Path, prompts: list[str], steps: int) -> None:
    """RUN/progression.png (noise → image in `steps` DDIM steps, a row per prompt) and RUN/guidance.png
    (guidance scales × 8 seeds for the last prompt)."""
    at = sorted({round(steps * f) for f in (0, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1)})
    strip = generator.generate(prompts, seed=0, steps=steps, progression=at)  # (B, len(at), C, H, W)
    save_grid(strip.flatten(0, 1), run_dir / "progression.png", nrow=len(at), labels=prompts)
    scales = [0.0, 1.0, 2.0, 3.0, 5.0]
    rows = [generator.generate([prompts[-1]] * 8, seed=0, steps=steps, guidance=w) for w in scales]
    save_grid(torch.cat(rows), run_dir / "guidance.png", nrow=8, labels=[f"guidance {w:g}" for w in scales])
