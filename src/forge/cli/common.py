"""Helpers shared by the subcommand modules."""

import argparse
from typing import Any

from forge.config import add_options


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
