"""The conditional VAE: it overfits a few images, training changes its weights, runs save, load and resume
exactly, the same seed gives the same image, and bad options name their flag."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from forge.errors import ConfigError, DataError
from forge.image.text_encoder import TextEncoder, load_minilm
from forge.image.vae import (
    ConditionalVAE,
    VaeConfig,
    gaussian_kl,
    load_vae,
    slerp,
    to_image,
    train_vae,
    vae_loss,
)

CAPTIONS = ["a handwritten zero", "a handwritten one", "the digit two", "the digit three"]


def tiny_config(data: Path, out: Path, **overrides: object) -> VaeConfig:
    base = VaeConfig(
        data=str(data), out=str(out), width=8, cond_dim=16, latent_dim=4, batch_size=16, max_steps=6,
        log_every=2, sample_every=3, checkpoint_every=3, kl_warmup_steps=4, threads=1, progress=False,
    )  # fmt: skip
    return replace(base, **overrides)  # type: ignore[arg-type]


def test_gaussian_kl_is_zero_at_the_prior_and_matches_torch() -> None:
    assert gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3)).abs().max() < 1e-7
    mean, logvar = torch.randn(2, 3), torch.randn(2, 3)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(2, 3), torch.ones(2, 3))
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    torch.testing.assert_close(gaussian_kl(mean, logvar), expected)


def test_slerp_keeps_endpoints_and_norm() -> None:
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    path = slerp(a, b, torch.linspace(0, 1, 5))
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[-1], b)
    torch.testing.assert_close(path.norm(dim=1), torch.ones(5))


@pytest.mark.parametrize("reconstruction", ["bernoulli", "gaussian"])
def test_overfits_a_few_images(reconstruction: str) -> None:
    images = torch.rand(4, 1, 8, 8) * 2 - 1  # (4, 1, 8, 8) noise: only memorising can reconstruct it
    model = ConditionalVAE(
        channels=1, size=8, width=16, latent_dim=8, text=TextEncoder("minilm", cond_dim=16)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def error() -> float:  # mean absolute error of reconstructing from the posterior mean
        with torch.no_grad():
            c = model.text(CAPTIONS)
            out = model.decode(model.encode(images, c)[0], c)
            return (to_image(out, reconstruction) - images).abs().mean().item()

    start = error()
    for _ in range(150):
        parts = vae_loss(model, images, CAPTIONS, beta=0.1, reconstruction=reconstruction, sigma=0.5)
        optimizer.zero_grad()
        parts["loss"].backward()
        optimizer.step()
    assert start > 0.4 and error() < 0.25 * start


def test_training_writes_a_run_that_loads_and_samples_deterministically(
    digits_dir: Path, tmp_path: Path
) -> None:
    config = tiny_config(digits_dir, tmp_path / "run")
    summary = train_vae(config)
    run = tmp_path / "run"
    assert summary["steps"] == 6 and 0 <= summary["active_units"] <= 4
    assert 0 <= summary["held_out_wording"]["conditioning_accuracy"] <= 1
    assert json.loads((run / "config.json").read_text())["kind"] == "vae"
    for name in ("model.safetensors", "metrics.jsonl", "loss.png", "samples/step-3.png", "samples/step-6.png",
                 "reconstructions.png", "interpolation.png", "summary.json"):  # fmt: skip
        assert (run / name).is_file(), name
    # training changed every weight the model has
    initial = load_file(str(run / "checkpoints" / "step-0000003" / "model.safetensors"))
    final = load_file(str(run / "model.safetensors"))
    assert set(final) == {k.removeprefix("model.") for k in initial}
    vae = load_vae(run)
    prompts = ["a handwritten three", "digit 7"]
    first = vae.generate(prompts, seed=5)
    assert first.shape == (2, 1, 8, 8) and first.min() >= -1 and first.max() <= 1
    torch.testing.assert_close(first, vae.generate(prompts, seed=5), rtol=0, atol=0)
    assert not torch.equal(first, vae.generate(prompts, seed=6))
    again = load_vae(run)
    torch.testing.assert_close(again.generate(prompts, seed=5), first, rtol=0, atol=0)
    strip = vae.interpolate("a handwritten one", "a handwritten seven", steps=5)
    assert strip.shape == (5, 1, 8, 8)
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    assert vae.reconstruct(images, prompts + ["one"]).shape == (3, 1, 8, 8)


def test_training_changes_every_weight(digits_dir: Path, tmp_path: Path) -> None:
    load_minilm()  # loading it may draw from the RNG: do it before seeding, as in a run that loaded it
    torch.manual_seed(0)
    before = ConditionalVAE(
        channels=1, size=8, width=8, latent_dim=4, text=TextEncoder("minilm", cond_dim=16)
    )
    train_vae(tiny_config(digits_dir, tmp_path / "run", max_steps=3))
    after = load_file(str(tmp_path / "run" / "model.safetensors"))
    unchanged = [k for k, v in before.state_dict().items() if torch.equal(v, after[k])]
    # the null vector stands for "" and no training caption is empty
    assert unchanged == ["text.null"]


def test_resume_continues_exactly(digits_dir: Path, tmp_path: Path) -> None:
    straight = tiny_config(digits_dir, tmp_path / "straight", max_steps=6, sample_every=0)
    train_vae(straight)
    train_vae(replace(straight, out=str(tmp_path / "split"), max_steps=3))
    train_vae(replace(straight, out=str(tmp_path / "split"), resume=True))
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    steps = [
        r["step"] for r in map(json.loads, (tmp_path / "split" / "metrics.jsonl").read_text().splitlines())
    ]
    assert steps == [2, 3, 4, 6]  # the first session logged its last step, 3; the second goes on from it


def test_existing_run_needs_resume(digits_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(digits_dir, tmp_path / "run", max_steps=1)
    train_vae(config)
    with pytest.raises(ConfigError, match="--resume"):
        train_vae(config)


BAD_OPTIONS = [
    ("beta", -1.0, "--beta"),
    ("latent_dim", 0, "--latent-dim"),
    ("reconstruction", "l1", "--reconstruction"),
    ("lr", 0.0, "--lr"),
    ("text_encoder", "clip", "--text-encoder"),
    ("batch_size", 0, "--batch-size"),
]


@pytest.mark.parametrize(("field", "value", "flag"), BAD_OPTIONS)
def test_bad_option_names_its_flag(field: str, value: object, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        VaeConfig(**{field: value})  # type: ignore[arg-type]


def test_unsupported_image_size_is_a_data_error() -> None:
    with pytest.raises(DataError, match="size 12"):
        ConditionalVAE(channels=3, size=12, width=8, latent_dim=4, text=TextEncoder("small", cond_dim=8))


def test_works_for_larger_colour_images() -> None:
    model = ConditionalVAE(channels=3, size=32, width=8, latent_dim=4, text=TextEncoder("small", cond_dim=8))
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    parts = vae_loss(model, images, ["a", "b"], beta=1.0, reconstruction="bernoulli", sigma=0.1)
    assert parts["loss"].isfinite()
    assert model.decode(torch.randn(2, 4), model.text(["a", "b"])).shape == (2, 3, 32, 32)
