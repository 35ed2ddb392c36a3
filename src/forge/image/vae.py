"""A conditional VAE for small images: q(z | x, c) and p(x | z, c), with c the caption's text embedding.

    encoder  x ─ conv ─ [FiLM(c) block, stride 2] × k ─ 4×4 features ⊕ c ─ Linear ─ μ, log σ²  (latent_dim)
    decoder  z ⊕ c ─ Linear ─ 4×4 ─ FiLM(c) block ─ [upsample, FiLM(c) block] × k ─ conv ─ logits / means

Design choices:
- images are size × size with size = 4·2^k (8 for the digits, 16, 32, 64); both networks condition on
  the TextEncoder's vector by concatenation at the bottleneck and FiLM (per-channel scale and shift,
  Perez et al. 2018) in every block, so the decoder cannot easily ignore the caption;
- loss: the negative ELBO, reconstruction + β·KL(q(z|x,c) ‖ N(0, I)) (β-VAE, Higgins et al. 2017), with
  β ramped linearly from 0 over `kl_warmup_steps` (KL warm-up, Bowman et al. 2016, Sønderby et al. 2016);
- reconstruction for data in [-1, 1]: "bernoulli" (default) is the binary cross-entropy of the decoder's
  logits against the pixels mapped to [0, 1], summed over pixels; the image is 2·sigmoid(logits) − 1.
  It is the usual choice for digit-like images even though the targets are grey levels (strictly a
  continuous Bernoulli, Loaiza-Ganem & Cunningham 2019, would normalise it). "gaussian" is a Gaussian
  with fixed σ = `sigma`: Σ (x − tanh(out))² / 2σ²;
- sampling decodes the mean of p(x | z, c) for z ~ N(0, temperature² I) (no pixel noise);
- the summary reports active latent units (Burda et al. 2016): units whose posterior mean varies across
  the data, Cov_x(E_q[z_u]) > 0.01;
- the training loop (`fit`) and the run-directory helpers below are shared with `gan.py`: they mirror
  `forge.train.loop` (progress bar, metrics.jsonl, loss.png, atomic resumable checkpoints, Ctrl-C saves),
  which the `image` layer may not import.
"""

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

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
from forge.io import write_json

RECONSTRUCTIONS = ("bernoulli", "gaussian")


# ---- configuration ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class VaeConfig(ImageTrainConfig):
    """Options of `forge image train --model vae`."""

    out: str = "runs/vae"
    """run directory to write"""
    latent_dim: int = 16
    """dimensions of the latent z"""
    beta: float = 1.0
    """weight of the KL term (β-VAE; 1 = the ELBO)"""
    kl_warmup_steps: int = 200
    """steps over which the KL weight ramps linearly from 0 to β (0 = no warm-up)"""
    reconstruction: str = "bernoulli"
    """reconstruction likelihood: bernoulli (BCE on pixels mapped to [0, 1]) or gaussian (fixed --sigma)"""
    sigma: float = 0.1
    """standard deviation of the gaussian reconstruction likelihood, in [-1, 1] pixel units"""
    temperature: float = 1.0
    """scale of the prior noise for the sample grids (below 1: cleaner, less varied samples)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, "latent_dim", 1)
        at_least(self, "kl_warmup_steps", 0)
        if self.beta < 0:
            raise ConfigError(f"--beta must be 0 or more, got {self.beta}")
        if self.reconstruction not in RECONSTRUCTIONS:
            raise ConfigError(
                f"--reconstruction must be one of {', '.join(RECONSTRUCTIONS)}, got {self.reconstruction!r}"
            )
        if not self.sigma > 0:
            raise ConfigError(f"--sigma must be positive, got {self.sigma}")
        if not self.temperature > 0:
            raise ConfigError(f"--temperature must be positive, got {self.temperature}")


# ---- layers ------------------------------------------------------------------------------------------


class FiLMBlock(nn.Module):
    """conv → GroupNorm → FiLM(c) → SiLU → conv → GroupNorm → SiLU; resample "down" halves the side,
    "up" doubles it."""

    def __init__(self, cin: int, cout: int, cond_dim: int, *, resample: str = "none") -> None:
        super().__init__()
        self.resample = resample
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2 if resample == "down" else 1, padding=1)
        self.norm1 = nn.GroupNorm(min(8, cout), cout)
        self.film = nn.Linear(cond_dim, 2 * cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(min(8, cout), cout)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, cin, 2H, 2W)
        h = self.norm1(self.conv1(x))  # (B, cout, H', W')
        scale, shift = self.film(c)[:, :, None, None].chunk(2, dim=1)  # (B, cout, 1, 1) each
        h = F.silu(h * (1 + scale) + shift)
        return F.silu(self.norm2(self.conv2(h)))


class ConditionalVAE(nn.Module):
    """Encoder q(z | x, c) and decoder p(x | z, c) around a TextEncoder for c (architecture only)."""

    def __init__(self, *, channels: int, size: int, width: int, latent_dim: int, text: TextEncoder) -> None:
        super().__init__()
        k, cond = stages(size), text.cond_dim
        widths = stage_channels(width, k)  # e.g. [32, 64] for 8×8
        self.text, self.latent_dim, self.bottom = text, latent_dim, widths[-1]
        self.enc_in = nn.Conv2d(channels, width, 3, padding=1)
        self.enc_blocks = nn.ModuleList(
            FiLMBlock(a, b, cond, resample="down") for a, b in zip(widths, widths[1:], strict=False)
        )
        self.enc_out = nn.Linear(widths[-1] * 16 + cond, 2 * latent_dim)
        self.dec_in = nn.Linear(latent_dim + cond, widths[-1] * 16)
        self.dec_mid = FiLMBlock(widths[-1], widths[-1], cond)
        self.dec_blocks = nn.ModuleList(
            FiLMBlock(b, a, cond, resample="up") for a, b in zip(widths[-2::-1], widths[:0:-1], strict=False)
        )
        self.dec_out = nn.Conv2d(width, channels, 3, padding=1)

    def encode(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance (B, latent_dim) of images x (B, C, H, W) under condition c."""
        h = F.silu(self.enc_in(x))  # (B, width, H, W)
        for block in self.enc_blocks:
            h = block(h, c)  # ... → (B, bottom, 4, 4)
        mean, logvar = self.enc_out(torch.cat([h.flatten(1), c], dim=1)).chunk(2, dim=1)
        return mean, logvar.clamp(-12, 8)

    def decode(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Decoder outputs (B, C, H, W): logits (bernoulli) or pre-tanh means (gaussian)."""
        h = self.dec_in(torch.cat([z, c], dim=1)).view(len(z), self.bottom, 4, 4)  # (B, bottom, 4, 4)
        h = self.dec_mid(h, c)
        for block in self.dec_blocks:
            h = block(h, c)  # ... → (B, width, H, W)
        return self.dec_out(h)


def to_image(out: torch.Tensor, reconstruction: str) -> torch.Tensor:
    """Decoder outputs → the mean image in [-1, 1]."""
    return 2 * torch.sigmoid(out) - 1 if reconstruction == "bernoulli" else torch.tanh(out)


def reconstruction_loss(
    out: torch.Tensor, x: torch.Tensor, reconstruction: str, sigma: float
) -> torch.Tensor:
    """−log p(x | z, c) per image (B,), summed over pixels (constants dropped)."""
    if reconstruction == "bernoulli":
        per_pixel = F.binary_cross_entropy_with_logits(out, (x + 1) / 2, reduction="none")
    else:
        per_pixel = (x - torch.tanh(out)) ** 2 / (2 * sigma**2)
    return per_pixel.flatten(1).sum(1)


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) ‖ N(0, I)) per row (B,) (Kingma & Welling 2014, appendix B)."""
    return 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(1)


def vae_loss(
    model: ConditionalVAE, x: torch.Tensor, captions: list[str], *, beta: float, reconstruction: str,
    sigma: float,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Negative β-ELBO of a batch (mean over images) and its parts, with one reparameterised sample."""
    c = model.text(captions)  # (B, cond_dim)
    mean, logvar = model.encode(x, c)  # (B, latent_dim) each
    z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
    rec = reconstruction_loss(model.decode(z, c), x, reconstruction, sigma).mean()
    kl = gaussian_kl(mean, logvar).mean()
    return {"loss": rec + beta * kl, "reconstruction": rec, "kl": kl}


# ---- sampling ------------------------------------------------------------------------------------------


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between rows a and b (D,) at fractions t (S,) → (S, D): it keeps the norm
    a Gaussian sample has, where a straight line would pass through unlikely short vectors (White 2016)."""
    omega = torch.arccos(F.cosine_similarity(a, b, dim=0).clamp(-1 + 1e-7, 1 - 1e-7))
    if float(omega) < 1e-4:
        return torch.lerp(a, b, t[:, None])
    weight_a = torch.sin((1 - t) * omega) / torch.sin(omega)  # (S,)
    weight_b = torch.sin(t * omega) / torch.sin(omega)
    return weight_a[:, None] * a + weight_b[:, None] * b


class VaeGenerator:
    """A trained conditional VAE ready to sample, reconstruct and interpolate."""

    def __init__(self, model: ConditionalVAE, *, reconstruction: str, device: torch.device) -> None:
        self.model, self.reconstruction, self.device = model.eval(), reconstruction, device

    def _noise(self, count: int, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(count, self.model.latent_dim, generator=generator).to(self.device)  # (B, latent)

    @torch.no_grad()
    def generate(self, prompts: list[str], *, seed: int = 0, temperature: float = 1.0) -> torch.Tensor:
        """One image (B, C, H, W) in [-1, 1] per prompt: the decoder's mean for z ~ N(0, temperature² I)."""
        if not temperature > 0:
            raise ConfigError(f"--temperature must be positive, got {temperature}")
        z = self._noise(len(prompts), seed) * temperature
        return to_image(self.model.decode(z, self.model.text(prompts)), self.reconstruction).cpu()

    @torch.no_grad()
    def encode(self, images: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance (B, latent_dim) of images (B, C, H, W) in [-1, 1]."""
        mean, logvar = self.model.encode(images.to(self.device), self.model.text(captions))
        return mean.cpu(), logvar.cpu()

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """Decode the posterior mean of each image under its caption → (B, C, H, W) in [-1, 1]."""
        c = self.model.text(captions)
        mean, _ = self.model.encode(images.to(self.device), c)
        return to_image(self.model.decode(mean, c), self.reconstruction).cpu()

    @torch.no_grad()
    def interpolate(
        self, prompt_a: str, prompt_b: str | None = None, *, steps: int = 8, seed: int = 0,
        z_a: torch.Tensor | None = None, z_b: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """`steps` images (S, C, H, W) along a path in latent space: z from z_a to z_b (slerp; by default
        two draws from `seed`) while the caption embedding moves linearly from prompt_a to prompt_b (or
        stays at prompt_a). Pass z_b = z_a to morph only the caption."""
        if steps < 2:
            raise ConfigError(f"--steps must be at least 2 for an interpolation, got {steps}")
        noise = self._noise(2, seed)
        start = noise[0] if z_a is None else z_a.to(self.device).flatten()
        end = noise[1] if z_b is None else z_b.to(self.device).flatten()
        t = torch.linspace(0, 1, steps, device=self.device)  # (S,)
        c = self.model.text([prompt_a, prompt_b if prompt_b is not None else prompt_a])  # (2, cond_dim)
        conds = torch.lerp(c[0], c[1], t[:, None])  # (S, cond_dim)
        return to_image(self.model.decode(slerp(start, end, t), conds), self.reconstruction).cpu()

    def active_units(self, images: torch.Tensor, captions: list[str], threshold: float = 0.01) -> int:
        """Latent units whose posterior mean varies across the data: Cov_x(E_q[z_u]) > threshold
        (Burda et al. 2016, section 5.2)."""
        means = torch.cat(
            [self.encode(images[i : i + 512], captions[i : i + 512])[0] for i in range(0, len(images), 512)]
        )  # (N, latent)
        return int((means.var(dim=0) > threshold).sum())


def write_pictures(
    generator: VaeGenerator, run_dir: Path, prompts: list[str], data: Any, temperature: float
) -> None:
    """Final pictures: samples, reconstructions (originals above, reconstructions below) and
    interpolation strips (z between two draws per prompt, then prompt → next prompt at a fixed z)."""
    per_row = 8
    grid = generator.generate([p for p in prompts for _ in range(per_row)], seed=0, temperature=temperature)
    save_grid(grid, run_dir / "samples.png", nrow=per_row, labels=prompts)
    originals = data.images[:per_row]
    recon = generator.reconstruct(originals, data.captions[:per_row])
    save_grid(torch.cat([originals, recon]), run_dir / "reconstructions.png", nrow=per_row,
              labels=["data", "reconstruction"])  # fmt: skip
    z = generator._noise(1, 0)[0]
    rows = [generator.interpolate(p, steps=per_row, seed=i) for i, p in enumerate(prompts[:3])]
    pairs = list(zip(prompts, prompts[1:], strict=False))[:3]
    rows += [generator.interpolate(a, b, steps=per_row, z_a=z, z_b=z) for a, b in pairs]
    labels = [f"z: {p}" for p in prompts[:3]] + [f"{a} -> {b}" for a, b in pairs]
    save_grid(torch.cat(rows), run_dir / "interpolation.png", nrow=per_row, labels=labels)


# ---- training and loading --------------------------------------------------------------------------


def _build(config: VaeConfig, channels: int, size: int) -> ConditionalVAE:
    text = TextEncoder(config.text_encoder, config.cond_dim)
    return ConditionalVAE(
        channels=channels, size=size, width=config.width, latent_dim=config.latent_dim, text=text
    )


def train_vae(config: VaeConfig) -> dict[str, Any]:
    """Train a conditional VAE on a prepared image set; write the run directory; return the summary."""
    run_dir, device = open_image_run(config)
    train, val = load_splits(config.data, run_dir, seed=config.seed)
    channels, size = train.images.shape[1], train.images.shape[-1]
    model = _build(config, channels, size).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    write_json(
        run_dir / "config.json",
        {"kind": "vae", "config": asdict(config), "image": {"channels": channels, "size": size}},
    )
    images, prompts = train.images.to(device), grid_prompts(train)
    generator = VaeGenerator(model, reconstruction=config.reconstruction, device=device)

    def train_step(step: int) -> dict[str, torch.Tensor]:
        model.train()
        index = torch.randint(len(train), (config.batch_size,))
        warmup = min(1.0, (step + 1) / config.kl_warmup_steps) if config.kl_warmup_steps else 1.0
        captions = [train.captions[i] for i in index.tolist()]
        beta = config.beta * warmup
        losses = vae_loss(
            model, images[index.to(device)], captions, beta=beta, reconstruction=config.reconstruction,
            sigma=config.sigma,
        )  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        return losses

    def snapshot(step: int) -> None:
        grid = generator.generate(
            [p for p in prompts for _ in range(8)], seed=0, temperature=config.temperature
        )
        save_grid(grid, run_dir / "samples" / f"step-{step}.png", nrow=8, labels=prompts)

    result = fit(config, run_dir, {"model": model, "optimizer": optimizer}, train_step, snapshot)
    snapshot(result["steps"])
    save_weights(run_dir / "model.safetensors", model)
    plot_metrics(run_dir, ("loss", "reconstruction", "kl"), f"VAE · run {run_dir.name}")
    held_out = val if val is not None else train
    write_pictures(generator, run_dir, prompts, held_out, config.temperature)
    summary = {
        "kind": "vae", **result,
        "active_units": generator.active_units(held_out.images, held_out.captions),
        "latent_dim": config.latent_dim,
        **judge(generator, train, val, temperature=config.temperature),
    }  # fmt: skip
    write_json(run_dir / "summary.json", summary)
    return summary


def load_vae(run_dir: str | Path, device: str = "cpu") -> VaeGenerator:
    """Load a VAE run directory written by `train_vae`."""
    saved = read_run_config(run_dir, "vae")
    config = VaeConfig(**saved["config"])
    model = _build(config, saved["image"]["channels"], saved["image"]["size"])
    load_weights(Path(run_dir) / "model.safetensors", model)
    where = torch.device(device)
    return VaeGenerator(model.to(where), reconstruction=config.reconstruction, device=where)
