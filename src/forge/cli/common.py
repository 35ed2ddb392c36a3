"""Helpers shared by the subcommand modules."""

import argparse
from typing import TYPE_CHECKING, Any

import torch

from forge.config import add_options

if TYPE_CHECKING:
    from forge.model.transformer import Transformer
    from forge.tokenizer.bpe import Tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_command(
    commands: Any,
    name: str,
    *,
    help: str,
    description: str = "",
    config_cls: type | None = None,
    skip: tuple[str, ...] = (),
) -> argparse.ArgumentParser:
    """Add a subcommand whose options come from `config_cls`, plus `--config FILE.toml`."""
    parser: argparse.ArgumentParser = commands.add_parser(name, help=help, description=description or help)
    if config_cls is not None:
        parser.add_argument(
            "--config",
            metavar="FILE.toml",
            default=None,
            help="read options from a TOML file (flags given on the command line win)",
        )
        add_options(parser, config_cls, skip=skip)
    return parser


def add_docs_argument(parser: argparse.ArgumentParser) -> None:
    """The optional DOCS_DIR positional of the commands that read prepared documents."""
    parser.add_argument(
        "docs",
        nargs="?",
        default="data/docs",
        metavar="DOCS_DIR",
        help="documents directory written by `forge data prepare` (default: data/docs)",
    )


def load_run(
    run: str, *, device: str = "auto", threads: int = 0, dtype: str = "float32"
) -> tuple["Transformer", "Tokenizer", torch.device]:
    """Set the threads, then load a run directory's model (in eval mode, on `device`, in `dtype`) and
    tokenizer; returns them with the device used."""
    from forge.model.io import load_model
    from forge.runtime import resolve_device, set_threads
    from forge.tokenizer.bpe import Tokenizer

    set_threads(threads)
    where = resolve_device(device)
    model = load_model(run, device=str(where), dtype=DTYPES[dtype]).eval()
    return model, Tokenizer.load(f"{run}/tokenizer"), where
