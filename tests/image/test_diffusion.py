import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from safetensors.torch import load_file

from forge.errors import ConfigError
from forge.image.diffusion import (
    DiffusionConfig,
    DiffusionModel,
    build_unet,
    load_diffusion,
    save_diffusion,
    train_diffusion,
    unet_denoiser,
)
from forge.image.schedulers import guided, noised, sample_loop, sampling_scheduler, training_scheduler
from forge.image.text_encoder import TextEncoder

TINY = {"width": 8, "levels": 2, "cond_dim": 8}


def tiny_model(text_encoder: str = "small") -> DiffusionModel:
    config = DiffusionConfig(**TINY, text_encoder=text_encoder)
    encoder = TextEncoder(text_encoder, 8, width=16, layers=1, heads=2)
    return DiffusionModel(build_unet(config, 1, 8), encoder, 0.9).eval()


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("beta_schedule", ["cosine", "linear"])
def test_noising_and_a_ddim_step_round_trip(prediction: str, beta_schedule: str) -> None:
    scheduler = training_scheduler(beta_schedule=beta_schedule, prediction_type=prediction)
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    noise = torch.randn(3, 1, 8, 8)
    sampler = sampling_scheduler("ddim", dict(scheduler.config))
    sampler.set_timesteps(50)
    t, t_prev = sampler.timesteps[10], sampler.timesteps[11]
    noisy, target = noised(scheduler, x0, noise, t.expand(3))
    alpha_bar = scheduler.alphas_cumprod[t]
    torch.testing.assert_close(noisy, alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise)
    if prediction == "v_prediction":
        torch.testing.assert_close(target, alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0)
    else:
        assert torch.equal(target, noise)
    # given the true target, a deterministic DDIM step lands exactly on the training noising at t_prev
    stepped = sampler.step(target, t, noisy).prev_sample
    expected, _ = noised(scheduler, x0, noise, t_prev.expand(3))
    torch.testing.assert_close(stepped, expected, atol=1e-5, rtol=1e-4)
    assert beta_schedule != "cosine" or scheduler.config.beta_schedule == "squaredcos_cap_v2"


def test_guidance_one_is_the_conditional_prediction() -> None:
    model = tiny_model()
    denoise = unet_denoiser(model.unet)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([500, 20])
    cond, uncond = model.text_encoder(["one", "two"]), model.text_encoder(["", ""])
    with torch.no_grad():
        c, u = denoise(x, t, cond), denoise(x, t, uncond)
        assert torch.equal(guided(denoise, x, t, cond, uncond, 1.0), c)
        assert torch.equal(guided(denoise, x, t, cond, uncond, 0.0), u)
        torch.testing.assert_close(
            guided(denoise, x, t, cond, uncond, 3.0), u + 3.0 * (c - u), atol=1e-5, rtol=0
        )
    assert not torch.allclose(c, u)


@pytest.mark.parametrize("name", ["ddim", "ddpm", "dpm"])
def test_one_step_of_our_loop_is_the_scheduler_called_by_hand(name: str) -> None:
    model = tiny_model()
    denoise = unet_denoiser(model.unet)
    config = dict(training_scheduler().config)
    cond, uncond = model.text_encoder(["seven", "nine"]), model.text_encoder(["", ""])
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(2, 1, 8, 8, generator=g)
    _, frames = sample_loop(
        denoise, sampling_scheduler(name, config), noise=noise, cond=cond, uncond=uncond, guidance=2.0,
        steps=4, generator=g, progression=[0, 1],
    )  # fmt: skip
    g_hand = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, 8, 8, generator=g_hand)
    scheduler = sampling_scheduler(name, config)
    scheduler.set_timesteps(4)
    t = scheduler.timesteps[0]
    assert int(t) == 999  # trailing spacing starts from pure noise
    with torch.no_grad():
        c, u = denoise(x, t.expand(2), cond), denoise(x, t.expand(2), uncond)
    clipped = {"use_clipped_model_output": True} if name == "ddim" else {}  # GLIDE's DDIM, see schedulers.py
    by_hand = scheduler.step(u + 2.0 * (c - u), t, x, generator=g_hand, **clipped).prev_sample
    assert torch.equal(frames[0], x)
    torch.testing.assert_close(frames[1], by_hand, atol=1e-5, rtol=1e-4)


def test_unet_without_attention_is_conditioned_through_the_class_embedding() -> None:
    unet = build_unet(DiffusionConfig(**TINY, attention=False), 1, 8)
    assert not any("attn" in name for name, _ in unet.named_parameters())
    x, t = torch.randn(1, 1, 8, 8).expand(2, -1, -1, -1), torch.tensor([300, 300])
    with torch.no_grad():
        out = unet_denoiser(unet)(x, t, torch.randn(2, 8))
    assert out.shape == (2, 1, 8, 8) and not torch.allclose(out[0], out[1])


def test_overfits_one_batch() -> None:
    torch.manual_seed(0)
    model = tiny_model().train()
    scheduler = training_scheduler()
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    captions = ["a", "b", "c", "d"]
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(30):
        torch.manual_seed(1)  # the same noise and timesteps every step: one batch to memorise
        loss = model.loss(scheduler, images, captions, 0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.update_ema()
        losses.append(loss.item())
    assert losses[-1] < 0.15 * losses[0], losses[::5]
    assert int(model.ema_updates) == 30
    for ema, live in zip(model.ema_unet.parameters(), model.unet.parameters(), strict=True):
        assert not ema.requires_grad and ema.shape == live.shape


def test_saved_run_loads_in_diffusers_and_gives_the_same_images(tmp_path: Path) -> None:
    model = tiny_model("minilm")
    with torch.no_grad():  # EMA weights differ from the live ones, and the EMA ones are what is saved
        for p in model.ema_unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_diffusion(tmp_path, model, dict(training_scheduler().config))
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))
    prompts = ["a handwritten three", "8"]
    ours = load_diffusion(tmp_path).generate(prompts, seed=5, steps=6, guidance=3.0)
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "unet").eval()
    scheduler = DDIMScheduler.from_pretrained(tmp_path / "scheduler")
    text = TextEncoder.load(tmp_path / "text_encoder").eval()
    for name, saved in unet.state_dict().items():
        assert torch.equal(saved, model.ema_unet.state_dict()[name])
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 1, 8, 8, generator=g)
    scheduler.set_timesteps(6)
    with torch.no_grad():
        cond, uncond = text(prompts), text(["", ""])
        for t in scheduler.timesteps:
            c = unet(x, t, encoder_hidden_states=cond[:, None], class_labels=cond).sample
            u = unet(x, t, encoder_hidden_states=uncond[:, None], class_labels=uncond).sample
            x = scheduler.step(u + 3.0 * (c - u), t, x, use_clipped_model_output=True).prev_sample
    torch.testing.assert_close(ours, x.clamp(-1, 1), atol=1e-4, rtol=1e-4)  # CFG batched vs apart


def test_same_seed_same_image_and_progression(tmp_path: Path) -> None:
    save_diffusion(tmp_path, tiny_model(), dict(training_scheduler().config))
    generator = load_diffusion(tmp_path)
    for scheduler in ("ddim", "ddpm", "dpm"):
        a = generator.generate(["one", "two"], seed=0, steps=3, scheduler=scheduler)
        b = generator.generate(["one", "two"], seed=0, steps=3, scheduler=scheduler)
        c = generator.generate(["one", "two"], seed=1, steps=3, scheduler=scheduler)
        assert a.shape == (2, 1, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)
        assert a.min() >= -1 and a.max() <= 1
    strip = generator.generate(["one", "two"], seed=0, steps=3, progression=[0, 1, 3])
    assert strip.shape == (2, 3, 1, 8, 8)
    torch.testing.assert_close(strip[:, -1], generator.generate(["one", "two"], seed=0, steps=3))
    with pytest.raises(ConfigError, match="--scheduler"):
        generator.generate(["one"], scheduler="euler")
    with pytest.raises(ConfigError, match="--progression"):
        generator.generate(["one"], steps=3, progression=[4])


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("width", 12, "--width"),
        ("beta_schedule", "quadratic", "--beta-schedule"),
        ("prediction", "x0", "--prediction"),
        ("uncond_prob", 1.0, "--uncond-prob"),
        ("ema_decay", 1.0, "--ema-decay"),
        ("text_encoder", "clip", "--text-encoder"),
        ("levels", 0, "--levels"),
        ("min_lr_ratio", 2.0, "--min-lr-ratio"),
    ],
)
def test_bad_config_names_the_flag(field: str, value: object, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        DiffusionConfig(**{field: value})  # type: ignore[arg-type]


def _tiny_run(out: Path, data: Path, **overrides: object) -> DiffusionConfig:
    return DiffusionConfig(
        **TINY, data=str(data), out=str(out), batch_size=16, max_steps=4, warmup_steps=1, sample_every=2,
        checkpoint_every=2, keep_checkpoints=0, sample_steps=2, eval_steps=2, progress=False, threads=1,
        **overrides,  # type: ignore[arg-type]
    )  # fmt: skip


def test_training_writes_a_run_and_resumes_exactly(tmp_path: Path, digits_dir: Path) -> None:
    summary = train_diffusion(_tiny_run(tmp_path / "a", digits_dir))
    run = tmp_path / "a"
    assert summary["steps"] == 4 and json.loads((run / "config.json").read_text())["kind"] == "diffusion"
    assert 0 < summary["val_loss"] < 10 and 0 <= summary["held_out_wording"]["conditioning_accuracy"] <= 1
    expected = ["metrics.jsonl", "loss.png", "samples/step-2.png", "samples/step-4.png", "progression.png"]
    expected += [
        "guidance.png",
        "unet/config.json",
        "scheduler/scheduler_config.json",
        "text_encoder/model.safetensors",
    ]
    for name in expected:
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [4]
    final = load_file(str(run / "unet" / "diffusion_pytorch_model.safetensors"))
    # back to the step-2 checkpoint: resuming from it must reproduce step 4 exactly (EMA included)
    shutil.rmtree(run / "checkpoints" / "step-0000004")
    (run / "checkpoints" / "latest").write_text("step-0000002\n")
    with pytest.raises(ConfigError, match="--resume"):
        train_diffusion(_tiny_run(run, digits_dir))
    train_diffusion(_tiny_run(run, digits_dir, resume=True))
    resumed = load_file(str(run / "unet" / "diffusion_pytorch_model.safetensors"))
    for name, tensor in final.items():
        assert torch.equal(tensor, resumed[name]), name
