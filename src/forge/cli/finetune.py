"""`forge sft`."""

import argparse
from typing import Any

from forge.cli.common import add_command
from forge.config import from_args


def register(commands: Any) -> None:
    from forge.train.sft import SftConfig

    p = add_command(
        commands,
        "sft",
        config_cls=SftConfig,
        skip=("base",),
        help="fine-tune a run on chat conversations (assistant-only loss, packing, optional LoRA)",
        description="Supervised fine-tuning of BASE_RUN on conversations (JSONL of {'messages': [...]}) "
        "with the chat template: the loss is on the assistant's tokens, conversations are packed into rows "
        "without attending to each other, --lora trains adapters only. Reports the held-out loss before "
        "and after, and the change on the base model's own validation data (forgetting).",
    )
    p.add_argument("base", metavar="BASE_RUN", help="run directory of the model to fine-tune")
    p.set_defaults(handler=_sft)


def _sft(args: argparse.Namespace) -> None:
    from forge.train.sft import SftConfig, sft

    config = from_args(SftConfig, args, extra={"base": args.base})
    sft(config)
