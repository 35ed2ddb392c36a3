"""Noising for training and the guided sampling loop, on diffusers' schedulers (no copies of them).

    training:  x_t = scheduler.add_noise(x_0, ε, t); target ε, or v = scheduler.get_velocity(x_0, ε, t)
    sampling:  x_T ~ N(0, σ_init² I); for t in scheduler.timesteps:
                   x_t ← scheduler.step(guided(x_t, t), t, x_t).prev_sample

Design choices:
- one DDPMScheduler config defines the noise (1000 steps, linear or cosine "squaredcos_cap_v2" betas,
  ε or v prediction); the samplers (DDIM, DDPM, DPM-Solver++) are built from that same config with
  `from_config`, so training and sampling agree on every α̅_t;
- samplers space their timesteps "trailing" (Lin et al. 2023, "Common diffusion noise schedules and
  sample steps are flawed", §3.3): the first step of a short schedule is then t = 999, pure noise, as in
  training, rather than the t = 981 that "leading" spacing gives DDIM-50;
- DDIM re-derives ε from the clipped x̂_0 (`use_clipped_model_output`, as GLIDE does): the x̂_0 of a
  guided prediction often leaves [-1, 1], and stepping with the clipped x̂_0 but the unclipped ε
  pushes x_t off the training distribution (on 8×8 digits at guidance 3, conditioning accuracy fell
  from ~100% to ~1% without it). DDPM steps from the clipped x̂_0 alone, so it needs nothing;
- classifier-free guidance (Ho & Salimans 2022, eq. 6): guided = uncond + w · (cond − uncond). At
  w = 1 it is the conditional prediction, computed alone (half the work); at w = 0 the unconditional;
  otherwise both branches in one batch.
"""

from collections.abc import Callable
from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from forge.errors import ConfigError

BETA_SCHEDULES = {"cosine": "squaredcos_cap_v2", "linear": "linear"}
PREDICTIONS = ("epsilon", "v_prediction")
# diffusers' schedulers are untyped for mypy: they are `Any` in the signatures below
SAMPLERS: dict[str, Any] = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "dpm": DPMSolverMultistepScheduler,
}
# the denoiser: (x_t (B, C, H, W), t (B,), cond (B, D)) → prediction (B, C, H, W)
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def check_noise_options(beta_schedule: str, prediction_type: str) -> None:
    """Raise a ConfigError naming the flag if the noise schedule or prediction type is unknown."""
    if beta_schedule not in BETA_SCHEDULES:
        known = ", ".join(BETA_SCHEDULES)
        raise ConfigError(f"--beta-schedule must be one of {known}, got {beta_schedule!r}")
    if prediction_type not in PREDICTIONS:
        known = ", ".join(PREDICTIONS)
        raise ConfigError(f"--prediction must be one of {known}, got {prediction_type!r}")


def training_scheduler(
    *, beta_schedule: str = "cosine", prediction_type: str = "epsilon", train_steps: int = 1000
) -> Any:
    """The DDPM noise schedule that training samples timesteps and noise from."""
    check_noise_options(beta_schedule, prediction_type)
    return DDPMScheduler(
        num_train_timesteps=train_steps,
        beta_schedule=BETA_SCHEDULES[beta_schedule],
        prediction_type=prediction_type,
        clip_sample=True,  # data lives in [-1, 1]
        timestep_spacing="trailing",
    )


def sampling_scheduler(name: str, config: dict) -> Any:
    """Sampler `name` ('ddim', 'ddpm' or 'dpm') built from a training scheduler's config."""
    if name not in SAMPLERS:
        raise ConfigError(f"--scheduler must be one of {', '.join(SAMPLERS)}, got {name!r}")
    options: dict = {"timestep_spacing": "trailing"}
    if name == "dpm":  # DPM-Solver++(2M), the multistep solver for guided sampling (Lu et al. 2022)
        options |= {"algorithm_type": "dpmsolver++", "solver_order": 2}
    return SAMPLERS[name].from_config(config, **options)


def noised(
    scheduler: Any, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The noisy images x_t and the training target (ε or v) for clean `images` (B, C, H, W)."""
    noisy = scheduler.add_noise(images, noise, timesteps)  # (B, C, H, W)
    if scheduler.config.prediction_type == "v_prediction":
        return noisy, scheduler.get_velocity(images, noise, timesteps)
    return noisy, noise


def guided(
    denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
    guidance: float,
) -> torch.Tensor:  # fmt: skip
    """The classifier-free guided prediction uncond + w · (cond − uncond) for x (B, C, H, W)."""
    if guidance == 1:
        return denoiser(x, t, cond)
    if guidance == 0:
        return denoiser(x, t, uncond)
    both = denoiser(torch.cat([x, x]), torch.cat([t, t]), torch.cat([uncond, cond]))  # (2B, C, H, W)
    pred_uncond, pred_cond = both.chunk(2)
    return pred_uncond + guidance * (pred_cond - pred_uncond)


def step_options(scheduler: Any) -> dict[str, Any]:
    """Keyword arguments of `scheduler.step` in our sampling loop: DDIM steps with ε re-derived from the
    clipped x̂_0."""
    return {"use_clipped_model_output": True} if isinstance(scheduler, DDIMScheduler) else {}


@torch.no_grad()
def sample_loop(
    denoiser: Denoiser,
    scheduler: Any,
    *,
    noise: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    guidance: float,
    steps: int,
    generator: torch.Generator | None = None,
    progression: list[int] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Denoise `noise` (B, C, H, W) in `steps` steps; returns x_0 and the x_t after each step listed in
    `progression` (1 = after the first step; 0 = the starting noise)."""
    scheduler.set_timesteps(steps, device=noise.device)
    options = step_options(scheduler)
    x = noise * scheduler.init_noise_sigma
    keep = set(progression or ())
    frames = [x.clone()] if 0 in keep else []
    for i, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(x, t)
        prediction = guided(denoiser, model_input, t.expand(len(x)), cond, uncond, guidance)
        x = scheduler.step(prediction, t, x, generator=generator, **options).prev_sample
        if i + 1 in keep:
            frames.append(x.clone())
    return x, frames
