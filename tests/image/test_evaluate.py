"""The yardstick: an accurate judge, a Fréchet distance that is 0 for equal sets and grows with a shift,
coverage that sees a collapsed generator, conditioning accuracy that sees shuffled labels."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from forge.data.images import load_images
from forge.image.evaluate import (
    Yardstick,
    coverage,
    digit_prompts,
    evaluate_generator,
    frechet_distance,
    to_classifier_space,
)


@pytest.fixture(scope="module")
def yardstick(digits_dir: Path) -> Yardstick:
    return Yardstick.from_dir(digits_dir)


@pytest.fixture(scope="module")
def held_out(digits_dir: Path) -> Any:
    return load_images(digits_dir, "val")


def test_classifier_space_round_trips_digits_at_any_multiple_of_eight() -> None:
    pixels = torch.randint(0, 17, (5, 1, 8, 8)).float()
    images = pixels / 8 - 1  # 0..16 → [-1, 1]
    assert np.allclose(to_classifier_space(images), pixels.flatten(1).numpy())
    big = images.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3).repeat(1, 3, 1, 1)  # (5, 3, 32, 32)
    assert np.allclose(to_classifier_space(big), pixels.flatten(1).numpy())


def test_classifier_is_accurate_on_held_out_real_digits(yardstick: Yardstick, held_out: Any) -> None:
    assert yardstick.classifier_accuracy >= 0.97
    assert yardstick.conditioning_accuracy(held_out.images, held_out.labels) == yardstick.classifier_accuracy


def test_conditioning_accuracy_drops_to_chance_with_shuffled_labels(
    yardstick: Yardstick, held_out: Any
) -> None:
    shuffled = held_out.labels[torch.randperm(len(held_out.labels))]
    assert yardstick.conditioning_accuracy(held_out.images, shuffled) < 0.2


def test_frechet_distance_is_zero_for_equal_sets_and_grows_with_a_shift() -> None:
    features = np.random.default_rng(0).normal(size=(400, 8))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)
    distances = [frechet_distance(features + shift, features) for shift in (0.5, 1.0, 2.0)]
    assert distances == sorted(distances) and distances[0] > 0.1
    assert distances[1] == pytest.approx(8 * 1.0**2, rel=1e-6)  # a pure mean shift: |Δμ|² = D · shift²


def test_real_held_out_images_sit_at_the_floor(yardstick: Yardstick, held_out: Any) -> None:
    assert yardstick.frechet(held_out.images) == pytest.approx(yardstick.floor)
    noisy = (held_out.images + 0.5 * torch.randn_like(held_out.images)).clamp(-1, 1)
    assert yardstick.frechet(noisy) > 2 * yardstick.floor


def test_coverage_sees_a_collapsed_generator(yardstick: Yardstick, held_out: Any) -> None:
    assert coverage(np.repeat(np.arange(10), 20))["coverage"] == 1.0
    collapsed = coverage(np.full(200, 3))
    assert collapsed["coverage"] == 0.1 and collapsed["class_counts"][3] == 200
    threes = held_out.images[held_out.labels == 3]
    score = yardstick.score(threes.repeat(20, 1, 1, 1)[:180], np.repeat(np.arange(10), 18))
    assert score["coverage"] == 0.1 and score["conditioning_accuracy"] < 0.2
    assert score["frechet_ratio"] > 5


class _RealDigits:
    """A 'generator' that returns a held-out real image of the digit named in each prompt."""

    def __init__(self, held_out: Any) -> None:
        self.held_out = held_out

    def generate(self, prompts: list[str], *, seed: int = 0, **options: Any) -> torch.Tensor:
        words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
        picks = []
        for prompt in prompts:
            digit = next(d for d in range(10) if str(d) in prompt or words[d] in prompt.split())
            picks.append(self.held_out.images[self.held_out.labels == digit][seed % 5])
        return torch.stack(picks)


def test_evaluate_generator_scores_a_perfect_generator_highly(yardstick: Yardstick, held_out: Any) -> None:
    result = evaluate_generator(_RealDigits(held_out), yardstick, prompts_per_class=4, seed=1, batch_size=16)
    assert result["samples"] == 40 and result["wording"] == "held-out"
    assert result["conditioning_accuracy"] >= 0.9 and result["coverage"] == 1.0


def test_digit_prompts_use_held_out_wording_and_are_seeded() -> None:
    captions, labels = digit_prompts(3, seed=0)
    assert labels.tolist() == [d for d in range(10) for _ in range(3)]
    assert digit_prompts(3, seed=0)[0] == captions
    assert any(str(d) in c for c, d in zip(captions, labels, strict=True))  # numerals only when held out
    train_captions, _ = digit_prompts(3, seed=0, held_out_wording=False)
    assert not any(ch.isdigit() for c in train_captions for ch in c)
