"""A conditional GAN for small images, conditioned on the caption's text embedding.

    generator      z ⊕ c ─ Linear ─ 4×4 ─ FiLM(c) block ─ [upsample, FiLM(c) block] × k ─ conv ─ tanh
    discriminator  x ─ SN conv ─ [SN conv, stride 2] × k ─ 4×4 ─ SN Linear ─ h;  D(x, c) = ψ(h) + ⟨V·c, h⟩

Design choices:
- DCGAN-style all-convolutional networks (Radford et al. 2016) at size = 4·2^k (8 for the digits); the
  generator normalises with GroupNorm and is conditioned by concatenating c to z and by FiLM in every
  block (as the VAE's decoder; no batch statistics, so a sample depends only on its own z and caption);
- the discriminator has spectral norm on every layer (Miyato et al. 2018) and projection conditioning
  (Miyato & Koyama 2018): the caption enters as an inner product with the image features;
- generator and discriminator each own a TextEncoder projection (the frozen MiniLM is shared), so the
  two adversaries never pull on the same conditioning weights;
- hinge loss (Lim & Ye 2017; Miyato et al. 2018) by default, or the non-saturating loss of Goodfellow et
  al. 2014; Adam with β1 = 0 and β2 = 0.9 and a discriminator learning rate of its own (TTUR, Heusel
  et al. 2017);
- `mismatch` (the matching-aware discriminator of Reed et al. 2016): real images paired with another
  image's caption count as fake, so D must check the caption, not only realism; pairs with the same
  label (or caption) are not counted;
- an exponential moving average of the generator's weights (Karras et al. 2018; Yazıcı et al. 2019)
  samples and is saved; the summary reports per-class coverage from the yardstick for labelled digits.
"""

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from forge.errors import ConfigError
from forge.image.grids import save_grid
from forge.image.runs import read_run_config
from forge.image.text_encoder import TextEncoder
from forge.image.training import (
    ImageTrainConfig,
    at_least,
    fit,
    grid_prompts,
    judge,
    load_splits,
    load_weights,
    open_image_run,
    plot_metrics,
    save_weights,
    stage_channels,
    stages,
)
from forge.image.vae import FiLMBlock
from forge.io import write_json

LOSSES = ("hinge", "nonsaturating")


@dataclass(frozen=True, kw_only=True)
class GanConfig(ImageTrainConfig):
    """Options of `forge image train --model gan`."""

    out: str = "runs/gan"
    """run directory to write"""
    noise_dim: int = 64
    """dimensions of the generator's noise z"""
    loss: str = "hinge"
    """adversarial loss: hinge or nonsaturating"""
    lr: float = 2e-4
    """generator learning rate (Adam)"""
    d_lr: float = 4e-4
    """discriminator learning rate (Adam)"""
    beta1: float = 0.0
    """Adam β1 of both networks (0.0 with spectral norm and hinge loss; DCGAN used 0.5)"""
    beta2: float = 0.9
    """Adam β2 of both networks"""
    mismatch: float = 0.5
    """weight of real images with mismatched captions among the discriminator's fakes (0 = off)"""
    ema: float = 0.999
    """decay of the moving average of the generator's weights used for sampling (0 = off)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, "noise_dim", 1)
        if self.loss not in LOSSES:
            raise ConfigError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if not self.d_lr > 0:
            raise ConfigError(f"--d-lr must be positive, got {self.d_lr}")
        for name in ("beta1", "beta2", "ema"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.mismatch < 1:
            raise ConfigError(f"--mismatch must be in [0, 1), got {self.mismatch}")


# ---- networks -----------------------------------------------------------------------------------------


class Generator(nn.Module):
    """G(z, c): noise (B, noise_dim) and captions → images (B, C, H, W) in [-1, 1]."""

    def __init__(self, *, channels: int, size: int, width: int, noise_dim: int, text: TextEncoder) -> None:
        super().__init__()
        widths = stage_channels(width, stages(size))  # e.g. [32, 64] for 8×8
        cond = text.cond_dim
        self.text, self.noise_dim, self.bottom = text, noise_dim, widths[-1]
        self.fc = nn.Linear(noise_dim + cond, widths[-1] * 16)
        self.mid = FiLMBlock(widths[-1], widths[-1], cond)
        self.blocks = nn.ModuleList(
            FiLMBlock(b, a, cond, resample="up") for a, b in zip(widths[-2::-1], widths[:0:-1], strict=False)
        )
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, z: torch.Tensor, captions: list[str]) -> torch.Tensor:
        c = self.text(captions)  # (B, cond_dim)
        h = self.fc(torch.cat([z, c], dim=1)).view(len(z), self.bottom, 4, 4)  # (B, bottom, 4, 4)
        h = self.mid(h, c)
        for block in self.blocks:
            h = block(h, c)  # ... → (B, width, H, W)
        return torch.tanh(self.out(h))


class Discriminator(nn.Module):
    """D(x, c) → (B,) realism scores, with projection conditioning on the caption embedding."""

    def __init__(self, *, channels: int, size: int, width: int, text: TextEncoder) -> None:
        super().__init__()
        widths = stage_channels(width, stages(size))
        features = widths[-1] * 4
        self.text = text
        self.conv_in = spectral_norm(nn.Conv2d(channels, width, 3, padding=1))
        self.downs = nn.ModuleList(
            spectral_norm(nn.Conv2d(a, b, 4, stride=2, padding=1))
            for a, b in zip(widths, widths[1:], strict=False)
        )
        self.conv_mid = spectral_norm(nn.Conv2d(widths[-1], widths[-1], 3, padding=1))
        self.fc = spectral_norm(nn.Linear(widths[-1] * 16, features))
        self.psi = spectral_norm(nn.Linear(features, 1))
        self.embed = spectral_norm(nn.Linear(text.cond_dim, features))

    def forward(self, x: torch.Tensor, captions: list[str]) -> torch.Tensor:
        h = F.leaky_relu(self.conv_in(x), 0.2)  # (B, width, H, W)
        for down in self.downs:
            h = F.leaky_relu(down(h), 0.2)  # ... → (B, bottom, 4, 4)
        h = F.leaky_relu(self.conv_mid(h), 0.2)
        h = F.leaky_relu(self.fc(h.flatten(1)), 0.2)  # (B, features)
        projection = (self.embed(self.text(captions)) * h).sum(dim=1)  # (B,)
        return self.psi(h).squeeze(1) + projection


# ---- losses -----------------------------------------------------------------------------------------


def real_loss(score: torch.Tensor, loss: str) -> torch.Tensor:
    """D's loss on scores (B,) of pairs it should call real: hinge E[max(0, 1 − D)] (Lim & Ye 2017),
    or the log-loss E[−log σ(D)] (Goodfellow et al. 2014, eq. 1)."""
    return F.relu(1 - score).mean() if loss == "hinge" else F.softplus(-score).mean()


def fake_loss(score: torch.Tensor, loss: str) -> torch.Tensor:
    """D's loss on scores (B,) of pairs it should call fake (generated or mismatched): E[max(0, 1 + D)],
    or E[−log(1 − σ(D))]."""
    return F.relu(1 + score).mean() if loss == "hinge" else F.softplus(score).mean()


def generator_loss(fake: torch.Tensor, loss: str) -> torch.Tensor:
    """G's loss on D's scores of its samples: −E[D(G(z))] (hinge), or the non-saturating
    −E[log σ(D(G(z)))] (Goodfellow et al. 2014, section 3)."""
    return -fake.mean() if loss == "hinge" else F.softplus(-fake).mean()


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model, for parameters and float buffers."""
    for target, source in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
        if target.dtype.is_floating_point:
            target.lerp_(source, 1 - decay)
        else:
            target.copy_(source)


# ---- sampling, training, loading --------------------------------------------------------------------


class GanGenerator:
    """A trained generator ready to sample."""

    def __init__(self, generator: Generator, device: torch.device) -> None:
        self.generator, self.device = generator.eval(), device

    @torch.no_grad()
    def generate(self, prompts: list[str], *, seed: int = 0) -> torch.Tensor:
        """One image (B, C, H, W) in [-1, 1] per prompt, z drawn from `seed`."""
        noise = torch.randn(
            len(prompts), self.generator.noise_dim, generator=torch.Generator().manual_seed(seed)
        )
        return self.generator(noise.to(self.device), prompts).cpu()


def _networks(config: GanConfig, channels: int, size: int) -> tuple[Generator, Discriminator]:
    shape = {"channels": channels, "size": size, "width": config.width}
    generator = Generator(
        **shape, noise_dim=config.noise_dim, text=TextEncoder(config.text_encoder, config.cond_dim)
    )
    return generator, Discriminator(**shape, text=TextEncoder(config.text_encoder, config.cond_dim))


def _mismatched(captions: list[str], labels: list[int]) -> tuple[list[str], torch.Tensor]:
    """Each image's neighbour's caption (rolled by one) and a mask (B,) of the pairs that truly differ."""
    rolled = captions[-1:] + captions[:-1]
    rolled_labels = labels[-1:] + labels[:-1]
    differ = [
        (a != b) if a >= 0 and b >= 0 else (x != y)
        for a, b, x, y in zip(labels, rolled_labels, captions, rolled, strict=True)
    ]
    return rolled, torch.tensor(differ)


def train_gan(config: GanConfig) -> dict[str, Any]:
    """Train a conditional GAN on a prepared image set; write the run directory; return the summary."""
    run_dir, device = open_image_run(config)
    train, val = load_splits(config.data, run_dir, seed=config.seed)
    channels, size = train.images.shape[1], train.images.shape[-1]
    generator, discriminator = _networks(config, channels, size)
    generator, discriminator = generator.to(device), discriminator.to(device)
    ema = copy.deepcopy(generator).requires_grad_(False)
    betas = (config.beta1, config.beta2)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.d_lr, betas=betas)
    image = {"channels": channels, "size": size}
    write_json(run_dir / "config.json", {"kind": "gan", "config": asdict(config), "image": image})
    images, prompts, labels = train.images.to(device), grid_prompts(train), train.labels.tolist()
    sampler = GanGenerator(ema if config.ema > 0 else generator, device)

    def batch() -> tuple[torch.Tensor, list[str], list[int]]:
        index = torch.randint(len(train), (config.batch_size,)).tolist()
        return images[index], [train.captions[i] for i in index], [labels[i] for i in index]

    def noise(count: int) -> torch.Tensor:
        return torch.randn(count, config.noise_dim, device=device)  # (B, noise_dim)

    def discriminator_step() -> dict[str, torch.Tensor]:
        x, captions, batch_labels = batch()
        with torch.no_grad():
            fake = generator(noise(len(x)), captions)
        real_score, fake_score = discriminator(x, captions), discriminator(fake, captions)
        loss = real_loss(real_score, config.loss) + (1 - config.mismatch) * fake_loss(fake_score, config.loss)
        wrong, differ = _mismatched(captions, batch_labels)
        if config.mismatch > 0 and bool(differ.any()):
            wrong_captions = [c for c, d in zip(wrong, differ.tolist(), strict=True) if d]
            wrong_score = discriminator(x[differ.to(device)], wrong_captions)  # (B',)
            loss = loss + config.mismatch * fake_loss(wrong_score, config.loss)
        opt_d.zero_grad(set_to_none=True)
        loss.backward()
        opt_d.step()
        return {"d_loss": loss, "d_real": real_score.mean(), "d_fake": fake_score.mean()}

    def train_step(step: int) -> dict[str, torch.Tensor]:
        generator.train()
        losses = discriminator_step()
        _, captions, _ = batch()  # the generator's captions: a fresh draw from the training captions
        discriminator.requires_grad_(False)
        g_loss = generator_loss(
            discriminator(generator(noise(len(captions)), captions), captions), config.loss
        )
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        discriminator.requires_grad_(True)
        if config.ema > 0:  # a short average at first, so early samples are not the random initialisation
            update_ema(ema, generator, min(config.ema, (1 + step) / (10 + step)))
        return {**losses, "g_loss": g_loss}

    def snapshot(step: int) -> None:
        grid = sampler.generate([p for p in prompts for _ in range(8)], seed=0)
        save_grid(grid, run_dir / "samples" / f"step-{step}.png", nrow=8, labels=prompts)

    parts: dict[str, nn.Module | torch.optim.Optimizer] = {
        "generator": generator,
        "discriminator": discriminator,
        "ema": ema,
        "opt_g": opt_g,
        "opt_d": opt_d,
    }
    result = fit(config, run_dir, parts, train_step, snapshot)
    snapshot(result["steps"])
    save_weights(run_dir / "model.safetensors", sampler.generator)
    plot_metrics(run_dir, ("d_loss", "g_loss", "d_real", "d_fake"), f"GAN · run {run_dir.name}")
    grid = sampler.generate([p for p in prompts for _ in range(8)], seed=0)
    save_grid(grid, run_dir / "samples.png", nrow=8, labels=prompts)
    summary = {"kind": "gan", **result, **judge(sampler, train, val)}
    write_json(run_dir / "summary.json", summary)
    return summary


def load_gan(run_dir: str | Path, device: str = "cpu") -> GanGenerator:
    """Load a GAN run directory written by `train_gan` (the averaged generator when --ema was on)."""
    saved = read_run_config(run_dir, "gan")
    config = GanConfig(**saved["config"])
    generator, _ = _networks(config, saved["image"]["channels"], saved["image"]["size"])
    load_weights(Path(run_dir) / "model.safetensors", generator)
    where = torch.device(device)
    return GanGenerator(generator.to(where), where)
