"""`forge eval`: bits per byte of a run on token shards, beside the unigram baseline."""

import argparse
import json
from typing import Any

import torch

from forge.cli.common import load_run
from forge.data.shards import TokenShards, iter_eval_batches
from forge.io import write_json
from forge.train.evaluate import evaluate, unigram_bpb, unigram_counts


def register(commands: Any) -> None:
    p = commands.add_parser(
        "eval",
        help="measure a run's loss and bits per byte on token shards",
        description="Evaluate the model in RUN_DIR on a split of token shards: loss per "
        "token and bits per byte, next to a unigram model (token frequencies of the train "
        "split) measured on the same tokens.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="run directory")
    p.add_argument(
        "--data", required=True, metavar="DIR", help="token shards directory (forge data tokenize)"
    )
    p.add_argument(
        "--split", default="val", choices=("train", "val"), help="split to evaluate (default: val)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="sequences per batch (default: 16)")
    p.add_argument(
        "--max-batches", type=int, default=0, help="stop after N batches (default: 0 = whole split)"
    )
    p.add_argument("--json", metavar="FILE", default=None, help="also write the results to this JSON file")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: 0 = the cores available)")
    p.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> None:
    model, tokenizer, device = load_run(args.run, device=args.device, threads=args.threads)
    shards = TokenShards(args.data, args.split)
    seq_len = model.config.context_length
    limit = args.max_batches or None
    token_bytes = torch.zeros(model.config.vocab_size, dtype=torch.int64)
    lengths = torch.from_numpy(tokenizer.token_byte_lengths().astype("int64"))
    token_bytes[: len(lengths)] = lengths
    result = evaluate(
        model,
        iter_eval_batches(shards, args.batch_size, seq_len, max_batches=limit),
        token_bytes,
        device=device,
    )
    counts = unigram_counts(TokenShards(args.data, "train"), model.config.vocab_size)
    baseline = unigram_bpb(
        counts, iter_eval_batches(shards, args.batch_size, seq_len, max_batches=limit), token_bytes.numpy()
    )
    out = {
        "split": args.split,
        "loss": result["loss"],
        "bpb": result["bpb"],
        "unigram_bpb": baseline,
        "tokens": result["tokens"],
        "bytes": result["bytes"],
        "bpb_reduction_vs_unigram": 1 - result["bpb"] / baseline,
    }
    print(json.dumps(out, indent=2))
    if args.json:
        write_json(args.json, out)
