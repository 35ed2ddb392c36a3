"""`forge image train`, `forge image generate` and `forge image eval`.

`forge image train --model diffusion|vae|gan` offers the options of all three models' config dataclasses
in one parser: an option shared by several models appears once, with each model's default in its help;
an option that belongs to other models than the one chosen is an error, not silently ignored. Those
options are added when `image train` is parsed or its help shown, not when the `forge` parser is built:
the diffusion config's module imports diffusers, seconds that every other command would pay.
"""

import argparse
import dataclasses
import json
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from forge.cli.common import add_command
from forge.config import add_options, from_args
from forge.errors import ConfigError
from forge.io import write_json

MODELS = ("diffusion", "vae", "gan")
PROGRESSION_FRAMES = 11  # the denoising strip: the noise, then 10 evenly spaced steps


def register(commands: Any) -> None:
    group = commands.add_parser(
        "image",
        help="train, sample and evaluate text-to-image models (diffusion, VAE, GAN)",
        description="Train, sample and evaluate text-to-image models on an image set from "
        "`forge data images`: a diffusion model, a VAE or a GAN, each conditioned on a text encoder.",
    )
    sub = group.add_subparsers(
        dest="image_command",
        metavar="COMMAND",
        required=True,
        help="the image step to run",
        parser_class=LazyParser,
    )
    _register_train(sub)
    _register_generate(sub)
    _register_eval(sub)


# ---- train --------------------------------------------------------------------------------------------


class LazyParser(argparse.ArgumentParser):
    """An ArgumentParser that runs `add_later(self)` once, before it first parses or formats help."""

    def __init__(self, *args: Any, add_later: Callable[[argparse.ArgumentParser], None] | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)
        self.add_later = add_later

    def complete(self) -> None:
        """Add the deferred options now (once)."""
        add_later, self.add_later = self.add_later, None
        if add_later is not None:
            add_later(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self.complete()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self.complete()
        return super().format_usage()

    def format_help(self) -> str:
        self.complete()
        return super().format_help()


def _model_configs() -> dict[str, type]:
    """The models' config dataclasses; VAE and GAN first, so that an option they share with diffusion
    takes their image-specific help text (diffusion's training options come from the text loop's)."""
    from forge.image.diffusion import DiffusionConfig
    from forge.image.gan import GanConfig
    from forge.image.vae import VaeConfig

    return {"vae": VaeConfig, "gan": GanConfig, "diffusion": DiffusionConfig}


def _option_defaults(cls: type, prefix: str = "") -> dict[str, Any]:
    """Dotted option name → default, for every (nested) field of a config dataclass."""
    hints = typing.get_type_hints(cls)
    found: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        if dataclasses.is_dataclass(hints[field.name]):
            found |= _option_defaults(hints[field.name], f"{prefix}{field.name}.")
        else:
            found[f"{prefix}{field.name}"] = field.default
    return found


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _add_model_options(parser: argparse.ArgumentParser, configs: dict[str, type]) -> None:
    """One option per field of any model's config; help says which models take it and their defaults."""
    defaults = {kind: _option_defaults(cls) for kind, cls in configs.items()}
    added: set[str] = set()
    for kind, cls in configs.items():
        add_options(parser, cls, skip=tuple(added))
        added |= set(defaults[kind])
    for action in parser._actions:
        owners = [kind for kind in configs if action.dest in defaults[kind]]
        if not owners:
            continue
        values = {kind: _shown(defaults[kind][action.dest]) for kind in owners}
        help_text = action.help or ""
        if len(set(values.values())) > 1:
            shown = ", ".join(f"{kind} {value}" for kind, value in values.items())
            help_text = re.sub(r"\(default: [^()]*\)$", f"(default: {shown})", help_text)
        if len(owners) < len(configs):
            help_text = f"[{', '.join(owners)}] {help_text}"
        action.help = help_text


def _register_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a text-to-image diffusion model, VAE or GAN on a prepared image set",
        description="Train a text-conditioned image model on an image set written by `forge data images`. "
        "Options marked [model, ...] belong to those models only. The run directory gets config.json, "
        "metrics.jsonl, loss.png, sample grids over time (samples/) and resumable checkpoints.",
        add_later=lambda parser: _add_model_options(parser, _model_configs()),
    )
    p.add_argument("--model", required=True, choices=MODELS, help="the model family to train")
    p.add_argument(
        "--config",
        metavar="FILE.toml",
        default=None,
        help="read options from a TOML file (flags given on the command line win)",
    )
    p.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> None:
    configs = _model_configs()
    own = set(_option_defaults(configs[args.model]))
    owners: dict[str, list[str]] = {}
    for kind, cls in configs.items():
        for name in _option_defaults(cls):
            owners.setdefault(name, []).append(kind)
    foreign = [name for name in vars(args) if name in owners and name not in own]
    if foreign:
        flag = f"--{foreign[0].replace('_', '-')}"
        raise ConfigError(
            f"{flag}: not an option of --model {args.model} (it is one of --model "
            f"{' and '.join(owners[foreign[0]])}; see `forge image train --help`)"
        )
    config = from_args(configs[args.model], args)
    if args.model == "diffusion":
        from forge.image.diffusion import train_diffusion

        summary = train_diffusion(config)
    elif args.model == "vae":
        from forge.image.vae import train_vae

        summary = train_vae(config)
    else:
        from forge.image.gan import train_gan

        summary = train_gan(config)
    print(json.dumps(summary, indent=2))


# ---- generate -----------------------------------------------------------------------------------------


def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default: cpu)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: 0 = the cores available)")


def _add_sampler_options(p: argparse.ArgumentParser, *, steps: int, guidance: float) -> None:
    g = p.add_argument_group("diffusion sampling (ignored by VAE and GAN runs)")
    g.add_argument("--steps", type=int, default=steps, help=f"denoising steps (default: {steps})")
    g.add_argument(
        "--guidance",
        type=float,
        default=guidance,
        help=f"classifier-free guidance scale w: uncond + w·(cond − uncond) (default: {guidance:g})",
    )
    g.add_argument(
        "--scheduler",
        default="ddim",
        choices=("ddim", "ddpm", "dpm"),
        help="sampler: DDIM, DDPM (ancestral) or DPM-Solver++ (default: ddim)",
    )


def _register_generate(sub: Any) -> None:
    p = add_command(
        sub,
        "generate",
        help="generate images for prompts from an image run and save them as a PNG grid",
        description="Generate --num images for each PROMPT with the model in RUN_DIR (diffusion, VAE or "
        "GAN) and save them as one PNG grid, a row per prompt. The same seed gives the same images. "
        "--progression writes the denoising strip (noise → image) of a diffusion run, a row per prompt; "
        "--guidance-grid writes guidance scales × seeds for one prompt.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="image run directory (forge image train --out)")
    p.add_argument(
        "prompts", nargs="+", metavar="PROMPT", help='captions to draw, e.g. "a handwritten seven"'
    )
    p.add_argument("--num", type=int, default=8, metavar="N", help="images per prompt (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--out", default=None, metavar="FILE.png", help="PNG to write (default: RUN_DIR/generated/PROMPT.png)"
    )
    _add_sampler_options(p, steps=50, guidance=3.0)
    p.add_argument(
        "--progression",
        action="store_true",
        help="diffusion only: write the denoising strip of each prompt (noise → image at spaced steps)",
    )
    p.add_argument(
        "--guidance-grid",
        default=None,
        metavar="W1,W2,...",
        help="diffusion only: for one PROMPT, a grid with one row per guidance scale and one column per seed",
    )
    p.add_argument(
        "--seeds", type=int, default=4, metavar="K", help="columns of --guidance-grid (default: 4)"
    )
    _add_runtime_options(p)
    p.set_defaults(handler=_generate)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "prompt"


def _sampler_options(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    if kind != "diffusion":
        return {}
    if args.steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {args.steps}")
    return {"steps": args.steps, "guidance": args.guidance, "scheduler": args.scheduler}


def _generate(args: argparse.Namespace) -> None:
    from forge.image.grids import save_grid
    from forge.image.runs import load_generator, run_kind
    from forge.runtime import set_threads

    if args.num < 1 or args.seeds < 1:
        raise ConfigError(f"--num and --seeds must be at least 1, got {args.num} and {args.seeds}")
    kind = run_kind(args.run)
    if kind != "diffusion" and (args.progression or args.guidance_grid):
        raise ConfigError(f"--progression and --guidance-grid need a diffusion run; {args.run} is a {kind}")
    if args.guidance_grid and len(args.prompts) > 1:
        raise ConfigError(f"--guidance-grid draws one PROMPT, got {len(args.prompts)}")
    set_threads(args.threads)
    generator = load_generator(args.run, device=args.device)
    out = Path(args.out or Path(args.run) / "generated" / f"{_slug(' '.join(args.prompts))}.png")
    options = _sampler_options(args, kind)
    if args.guidance_grid:
        scales = _parse_scales(args.guidance_grid)
        # the same seed in every row: the same starting noise, only the guidance changes
        rows = [generator.generate(args.prompts * args.seeds, seed=args.seed, **options | {"guidance": w})
                for w in scales]  # fmt: skip
        save_grid(torch.cat(rows), out, nrow=args.seeds, labels=[f"w={w:g}" for w in scales])
    elif args.progression:
        frames = min(args.steps, PROGRESSION_FRAMES - 1)
        shown = sorted({round(i * args.steps / frames) for i in range(frames + 1)})  # 0 = the noise
        strip = generator.generate(args.prompts, seed=args.seed, progression=shown, **options)
        save_grid(strip.flatten(0, 1), out, nrow=len(shown), labels=args.prompts)  # (P·S, C, H, W)
    else:
        prompts = [prompt for prompt in args.prompts for _ in range(args.num)]  # a row per prompt
        images = generator.generate(prompts, seed=args.seed, **options)
        save_grid(images, out, nrow=args.num, labels=args.prompts if len(args.prompts) > 1 else None)
    print(f"{kind} run {args.run}: {len(args.prompts)} prompt(s) → {out}")


def _parse_scales(text: str) -> list[float]:
    try:
        scales = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--guidance-grid must be numbers separated by commas, got {text!r}") from None
    if not scales:
        raise ConfigError("--guidance-grid needs at least one guidance scale, e.g. 0,1,3,5")
    return scales


# ---- eval ---------------------------------------------------------------------------------------------


def _register_eval(sub: Any) -> None:
    p = add_command(
        sub,
        "eval",
        help="score image runs with the yardstick (conditioning accuracy, Fréchet distance, coverage)",
        description="Generate digits from captions whose wording was held out from training and score "
        "them with an independent classifier (scikit-learn SVC on the real training images): conditioning "
        "accuracy, Fréchet distance to the training images and its ratio to the real-vs-real floor "
        "(held-out real images), and per-class coverage. Several runs give one comparison table.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="image run directories to compare")
    p.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="image set of the real images (default: the first run's training data)",
    )
    p.add_argument(
        "--prompts-per-class",
        type=int,
        default=0,
        metavar="N",
        help="images per digit (default: 0 = as many in all as the held-out real split has)",
    )
    p.add_argument(
        "--training-wording",
        action="store_true",
        help="caption with the training templates instead of the held-out ones",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the captions and the images (default: 0)")
    _add_sampler_options(p, steps=50, guidance=3.0)
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results to this JSON file")
    _add_runtime_options(p)
    p.set_defaults(handler=_eval)


def _training_data(run: str, run_config: dict[str, Any]) -> str | None:
    """The image directory a run trained on, as its config.json records it ('digits': RUN/data)."""
    data = run_config.get("config", {}).get("data")
    if data == "digits":
        return str(Path(run) / "data")
    return str(data) if data else None


def _eval(args: argparse.Namespace) -> None:
    from forge.image.evaluate import Yardstick, evaluate_generator, format_comparison, real_row
    from forge.image.runs import load_generator, read_run_config, run_summary
    from forge.runtime import set_threads

    if args.prompts_per_class < 0:
        raise ConfigError(f"--prompts-per-class must be 0 or more, got {args.prompts_per_class}")
    configs = [read_run_config(run) for run in args.runs]  # every RUN_DIR checked before any work
    data = args.data or _training_data(args.runs[0], configs[0])
    if not data:
        raise ConfigError(f"{args.runs[0]}/config.json names no training data; pass --data DIR")
    set_threads(args.threads)
    yardstick = Yardstick.from_dir(data)
    rows = [real_row(yardstick)]
    for run, config in zip(args.runs, configs, strict=True):
        options = _sampler_options(args, config["kind"])
        result = evaluate_generator(
            load_generator(run, device=args.device),
            yardstick,
            prompts_per_class=args.prompts_per_class or None,
            held_out_wording=not args.training_wording,
            seed=args.seed,
            **options,
        )
        minutes = run_summary(run).get("train_minutes")
        rows.append({"name": run, "model": config["kind"], "train_minutes": minutes, **result})
    print(format_comparison(rows))
    if args.json:
        write_json(args.json, {"data": str(data), "yardstick": yardstick.describe(), "rows": rows})
