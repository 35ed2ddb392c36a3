"""Text-to-image on the digits: diffusion, VAE and GAN on one data stage, scored by one yardstick.

    python bench/images.py [--out bench_out/images] [--quick]

Prepares scikit-learn's digits (`forge data images`), trains the three models one after the other on the
cores this process may use, and scores each with `forge.image.evaluate` on captions whose wording was
held out from training (numerals like "7", other phrasings): diffusion with DDIM-50 at guidance 0, 1
and 3 and with DDPM-1000 at guidance 3; the VAE; the GAN; and the real-vs-real floor (held-out real
digits against the training digits). Every generated set has as many images as the held-out split.

The judge is scikit-learn's SVC(gamma=0.001) trained on the real training digits; the Fréchet features
are a PCA(32) of the same. `summary.diffusion_frechet_ratio` is diffusion's Fréchet distance at
guidance 1 (DDIM-50) divided by the floor; the accuracies are at guidance 3 with DDIM-50.

Writes bench/results/images.json and sample grids (a row per digit, captions in held-out wording) to
bench/results/images/. `--quick` trains each model for a few dozen steps and scores 20 images per
setting, to check the script end to end in a few minutes; its results go to OUT/images-quick.json and
OUT/grids, never to bench/results.
"""

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from forge.data.images import DIGIT_WORDS, ImageDataConfig, prepare_images
from forge.image.diffusion import DiffusionConfig, train_diffusion
from forge.image.evaluate import Yardstick, evaluate_generator, format_comparison, real_row
from forge.image.gan import GanConfig, train_gan
from forge.image.grids import save_grid
from forge.image.runs import ImageGenerator, load_generator
from forge.image.vae import VaeConfig, train_vae
from forge.runtime import available_cores, set_threads

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "images.json"
GRIDS = ROOT / "bench" / "results" / "images"

# training settings on 2 CPU cores: each run also stops at 14 minutes of training, whatever its steps
BUDGET = {"max_minutes": 14.0, "progress": True}
SETTINGS: dict[str, dict[str, Any]] = {
    "diffusion": {"max_steps": 1900, "sample_every": 500, "checkpoint_every": 500},  # ~2.5 steps/s
    "vae": {"max_steps": 6000, "sample_every": 1000, "checkpoint_every": 1000},
    "gan": {"max_steps": 6000, "sample_every": 1000, "checkpoint_every": 1000},
}
QUICK: dict[str, dict[str, Any]] = {  # --quick: a few dozen steps of each model
    "diffusion": {"max_steps": 30, "warmup_steps": 5, "sample_every": 0, "checkpoint_every": 0,
                  "sample_steps": 5, "eval_steps": 5},
    "vae": {"max_steps": 30, "kl_warmup_steps": 10, "sample_every": 0, "checkpoint_every": 0},
    "gan": {"max_steps": 30, "sample_every": 0, "checkpoint_every": 0},
}  # fmt: skip
TRAINERS = {
    "diffusion": (DiffusionConfig, train_diffusion),
    "vae": (VaeConfig, train_vae),
    "gan": (GanConfig, train_gan),
}
DDIM = {"scheduler": "ddim", "steps": 50}
DDPM = {"scheduler": "ddpm", "steps": 1000}


def train_all(data: Path, work: Path, quick: bool) -> dict[str, dict[str, Any]]:
    """Train each model from scratch; its summary with the wall-clock minutes the bench measured."""
    trained = {}
    for kind, (config_cls, train) in TRAINERS.items():
        out = work / "runs" / kind
        shutil.rmtree(out, ignore_errors=True)  # from scratch every time: the minutes are the point
        settings = BUDGET | SETTINGS[kind] | (QUICK[kind] if quick else {})
        config = config_cls(data=str(data), out=str(out), **settings)
        print(f"\n== training {kind} → {out}", flush=True)
        start = time.perf_counter()
        summary = train(config)
        minutes = (time.perf_counter() - start) / 60
        trained[kind] = {"run": str(out), "minutes": round(minutes, 2), "summary": summary}
        print(f"{kind}: {minutes:.1f} minutes", flush=True)
    return trained


def evaluations(trained: dict[str, dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """(row name, run kind, generate options) of every scored setting."""
    rows = [(f"diffusion ddim-50 w={w:g}", "diffusion", DDIM | {"guidance": w}) for w in (0.0, 1.0, 3.0)]
    rows.append(("diffusion ddpm-1000 w=3", "diffusion", DDPM | {"guidance": 3.0}))
    return rows + [("vae", "vae", {}), ("gan", "gan", {})]


def evaluate_all(
    trained: dict[str, dict[str, Any]], yardstick: Yardstick, seed: int, prompts_per_class: int | None
) -> dict[str, dict[str, Any]]:
    """Score every setting with held-out wording; rows keyed by name, in table order."""
    generators = {kind: load_generator(info["run"]) for kind, info in trained.items()}
    rows = {"real": real_row(yardstick)}
    for name, kind, options in evaluations(trained):
        print(f"scoring {name} …", flush=True)
        result = evaluate_generator(
            generators[kind], yardstick, prompts_per_class=prompts_per_class, seed=seed, **options
        )
        rows[name] = {"name": name, "model": kind, "train_minutes": trained[kind]["minutes"], **result}
        print(f"  accuracy {100 * result['conditioning_accuracy']:.1f}%, "
              f"Fréchet ×{result['frechet_ratio']:.2f} of the floor, {result['generate_seconds']:.0f} s",
              flush=True)  # fmt: skip
    return rows


def digit_grid(generator: ImageGenerator, path: Path, prompts: list[str], *, per_prompt: int = 8,
               seed: int = 0, **options: Any) -> Path:  # fmt: skip
    """A PNG grid with a row of `per_prompt` images per prompt, labelled with the prompt."""
    images = generator.generate([p for p in prompts for _ in range(per_prompt)], seed=seed, **options)
    save_grid(images, path, nrow=per_prompt, labels=prompts)
    return path


def demo_grid(run_dir: str | Path, path: str | Path, *, per_prompt: int = 4, seed: int = 0) -> Path:
    """The demo's picture: "a handwritten three" … "a handwritten nine" from a diffusion run
    (DDIM-50, guidance 3), a row per digit. The same call as
    `forge image generate RUN "a handwritten three" … "a handwritten nine" --num 4 --out PATH`."""
    prompts = [f"a handwritten {word}" for word in DIGIT_WORDS[3:]]
    return digit_grid(load_generator(run_dir), Path(path), prompts, per_prompt=per_prompt, seed=seed,
                      **DDIM, guidance=3.0)  # fmt: skip


def sample_grids(trained: dict[str, dict[str, Any]], out: Path) -> dict[str, str]:
    """One grid per model, a row per digit, captions in held-out wording ("digit 7")."""
    prompts = [f"digit {d}" for d in range(10)]
    grids = {}
    for kind, info in trained.items():
        options = DDIM | {"guidance": 3.0} if kind == "diffusion" else {}
        path = digit_grid(load_generator(info["run"]), out / f"{kind}.png", prompts, **options)
        grids[kind] = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return grids


def summarise(rows: dict[str, dict[str, Any]], trained: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The headline numbers the issue asks for."""
    ddim3, ddim1 = rows["diffusion ddim-50 w=3"], rows["diffusion ddim-50 w=1"]
    return {
        "diffusion_accuracy": round(ddim3["conditioning_accuracy"], 4),
        "diffusion_frechet_ratio": round(ddim1["frechet_ratio"], 3),
        "vae_accuracy": round(rows["vae"]["conditioning_accuracy"], 4),
        "gan_accuracy": round(rows["gan"]["conditioning_accuracy"], 4),
        "diffusion_accuracy_guidance_0": round(rows["diffusion ddim-50 w=0"]["conditioning_accuracy"], 4),
        "ddpm1000_minus_ddim50": round(
            100 * (rows["diffusion ddpm-1000 w=3"]["conditioning_accuracy"] - ddim3["conditioning_accuracy"]),
            2,
        ),
        "train_minutes_max": round(max(info["minutes"] for info in trained.values()), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(ROOT / "bench_out" / "images"), help="working directory")
    parser.add_argument("--quick", action="store_true", help="a few dozen training steps per model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the evaluation captions and images")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = the cores available)")
    args = parser.parse_args()
    set_threads(args.threads)
    work = Path(args.out)
    data = work / "data"
    prepare_images(ImageDataConfig(out=str(data)))
    trained = train_all(data, work, args.quick)
    yardstick = Yardstick.from_dir(data)
    print(f"\njudge: {json.dumps(yardstick.describe())}", flush=True)
    rows = evaluate_all(trained, yardstick, args.seed, 2 if args.quick else None)
    grids = sample_grids(trained, work / "grids" if args.quick else GRIDS)
    result = {
        "summary": summarise(rows, trained),
        "table": list(rows.values()),
        "yardstick": yardstick.describe(),
        "grids": grids,
        "grid_description": "a row per digit 0..9 (captions 'digit N', held-out wording), 8 seeds per row; "
        "diffusion with DDIM-50 at guidance 3",
        "training": trained,
        "quick": args.quick,
        "threads": torch.get_num_threads(),
        "cores": available_cores(),
        "torch": torch.__version__,
    }
    path = work / "images-quick.json" if args.quick else RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print("\n" + format_comparison(list(rows.values())))
    print(
        f"\n{json.dumps(result['summary'], indent=2)}\nresults: {path} · grids: {', '.join(grids.values())}"
    )


if __name__ == "__main__":
    main()
