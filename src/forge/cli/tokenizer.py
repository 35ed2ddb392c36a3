"""`forge tokenizer train`."""

import argparse
from typing import Any

from forge.cli.common import add_command, add_docs_argument
from forge.config import from_args
from forge.tokenizer.bpe import TokenizerConfig, train_from_docs


def register(commands: Any) -> None:
    group = commands.add_parser(
        "tokenizer", help="train a byte-level BPE tokenizer", description="Train a byte-level BPE tokenizer."
    )
    sub = group.add_subparsers(
        dest="tokenizer_command", metavar="COMMAND", required=True, help="what to do with a tokenizer"
    )
    p = add_command(
        sub,
        "train",
        config_cls=TokenizerConfig,
        help="train a byte-level BPE tokenizer on prepared documents",
        description="Train a byte-level BPE tokenizer (HF tokenizers) with forge's special tokens "
        "on the documents of DOCS_DIR; writes tokenizer.json (loadable by transformers) and "
        "forge_tokenizer.json.",
    )
    add_docs_argument(p)
    p.add_argument(
        "--out",
        default="data/tokenizer",
        metavar="DIR",
        help="directory to write the tokenizer to (default: data/tokenizer)",
    )
    p.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> None:
    config = from_args(TokenizerConfig, args)
    tok = train_from_docs(args.docs, args.out, config)
    print(f"tokenizer with {tok.vocab_size:,} tokens → {args.out}")
