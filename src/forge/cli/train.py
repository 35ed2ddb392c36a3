"""`forge pretrain`."""

import argparse
from typing import Any

from forge.cli.common import add_command
from forge.config import from_args
from forge.errors import ConfigError
from forge.model.config import PRESETS
from forge.train.pretrain import PretrainConfig, pretrain


def register(commands: Any) -> None:
    p = add_command(
        commands,
        "pretrain",
        config_cls=PretrainConfig,
        skip=("model.vocab_size",),
        help="train a decoder-only transformer on token shards",
        description="Train a decoder-only transformer on next-token prediction. Model options "
        "start from --preset and can be changed one by one (--model.dim 256); training options "
        "are flags or a TOML file (--config).",
    )
    p.add_argument(
        "--preset",
        default="tiny",
        metavar="NAME",
        help=f"model shape preset: {', '.join(PRESETS)} (default: tiny)",
    )
    p.set_defaults(handler=_pretrain)


def _pretrain(args: argparse.Namespace) -> None:
    if args.preset not in PRESETS:
        raise ConfigError(f"--preset {args.preset!r} is not a preset; choose one of {', '.join(PRESETS)}")
    config = from_args(PretrainConfig, args, preset={"model": dict(PRESETS[args.preset])})
    pretrain(config)
