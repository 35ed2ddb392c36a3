"""`forge generate`: stream text from a trained run."""

import argparse
import sys
from typing import Any

from forge.cli.common import add_command
from forge.config import from_args
from forge.infer.engine import generate_text
from forge.infer.sampling import SamplingConfig
from forge.model.io import load_model
from forge.runtime import resolve_device, set_threads
from forge.tokenizer.bpe import Tokenizer


def register(commands: Any) -> None:
    p = add_command(
        commands,
        "generate",
        config_cls=SamplingConfig,
        help="generate text from a trained run, streamed to the terminal",
        description="Generate a continuation of PROMPT with the model in RUN_DIR, using a KV "
        "cache, streaming text as it is produced. Temperature 0 is greedy decoding.",
    )
    p.add_argument(
        "run", metavar="RUN_DIR", help="run directory (model.safetensors, config.json, tokenizer/)"
    )
    p.add_argument(
        "prompt",
        nargs="?",
        default="",
        metavar="PROMPT",
        help="text to continue ('-' reads it from standard input; empty: start of a document)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: 0 = the cores available)")
    p.set_defaults(handler=_generate)


def _generate(args: argparse.Namespace) -> None:
    config = from_args(SamplingConfig, args)
    set_threads(args.threads)
    device = resolve_device(args.device)
    model = load_model(args.run, device=str(device))
    tokenizer = Tokenizer.load(f"{args.run}/tokenizer")
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    sys.stdout.write(prompt)
    for piece in generate_text(model, tokenizer, prompt, config, device=device):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
