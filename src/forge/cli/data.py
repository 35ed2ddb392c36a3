"""`forge data prepare` and `forge data tokenize`."""

import argparse
from typing import Any

from forge.cli.common import add_command, add_docs_argument
from forge.config import from_args
from forge.data.prepare import PrepareConfig, prepare
from forge.data.shards import TokenizeConfig, tokenize_docs


def register(commands: Any) -> None:
    group = commands.add_parser(
        "data",
        help="collect, clean and tokenize a corpus",
        description="Collect, clean and tokenize a corpus.",
    )
    sub = group.add_subparsers(
        dest="data_command", metavar="COMMAND", required=True, help="the data step to run"
    )

    p = add_command(
        sub,
        "prepare",
        config_cls=PrepareConfig,
        skip=("inputs",),
        help="read documents, clean and deduplicate them, write Parquet shards and a report",
        description="Read documents from folders, JSONL or Parquet files (default: this Python's "
        "standard library), normalise them, drop corrupted, out-of-bounds and duplicate samples, "
        "and write docs-*.parquet, manifest.json and report.json/report.md.",
    )
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="folders, .jsonl/.jsonl.gz or .parquet files (none: the standard library)",
    )
    p.set_defaults(handler=_prepare)

    p = add_command(
        sub,
        "tokenize",
        config_cls=TokenizeConfig,
        help="encode prepared documents into train/val token shards",
        description="Encode the documents of DOCS_DIR with a trained tokenizer into flat "
        "train-*.bin / val-*.bin token shards (EOS between documents) and meta.json.",
    )
    add_docs_argument(p)
    p.add_argument(
        "--tokenizer",
        default="data/tokenizer",
        metavar="DIR",
        help="tokenizer directory written by `forge tokenizer train` (default: data/tokenizer)",
    )
    p.add_argument(
        "--out",
        default="data/tokens",
        metavar="DIR",
        help="output directory for the token shards (default: data/tokens)",
    )
    p.set_defaults(handler=_tokenize)


def _prepare(args: argparse.Namespace) -> None:
    config = from_args(PrepareConfig, args, extra={"inputs": list(args.inputs)} if args.inputs else None)
    manifest = prepare(config)
    print(f"kept {manifest['documents']:,} documents → {config.out} (see {config.out}/report.md)")


def _tokenize(args: argparse.Namespace) -> None:
    config = from_args(TokenizeConfig, args)
    meta = tokenize_docs(args.docs, args.tokenizer, args.out, config)
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    print(
        f"train {train['tokens']:,} tokens, val {val['tokens']:,} tokens "
        f"({meta['splits']['train']['bytes_per_token']:.2f} bytes/token) → {args.out}"
    )
