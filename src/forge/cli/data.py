"""`forge data prepare`, `forge data tokenize`, `forge data inspect`, `forge data synth-sft` and
`forge data images`."""

import argparse
import json
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from forge.cli.common import add_command, add_docs_argument
from forge.config import from_args
from forge.data.images import ImageDataConfig, prepare_images
from forge.data.prepare import PrepareConfig, prepare
from forge.data.report_pages import headline, numeric_columns, text_tables
from forge.data.shards import TokenizeConfig, tokenize_docs
from forge.data.synth_sft import SynthSftConfig, synthesize
from forge.errors import ConfigError, DataError


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

    p = add_command(
        sub,
        "inspect",
        help="show a documents directory's report and a few of its documents",
        description="Print the report of DOCS_DIR (headline, the funnel of steps, removals by reason, kept "
        "documents by domain) and a few documents drawn at random, or the stored examples of one removal "
        "reason. The full report is DOCS_DIR/report.html.",
    )
    add_docs_argument(p)
    p.add_argument("--samples", type=int, default=3, metavar="N", help="documents to show (default: 3)")
    p.add_argument(
        "--reason", default=None, metavar="R", help="show the stored examples of removal reason R instead"
    )
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the sample (default: 0)")
    p.set_defaults(handler=_inspect)

    p = add_command(
        sub,
        "synth-sft",
        config_cls=SynthSftConfig,
        help="derive instruction conversations from the standard library's documented functions",
        description="Turn every documented public function and method of this Python's standard library "
        "into conversations: 'write' (a signature and docstring summary → the source) and 'explain' "
        "(what does module.name do? → the docstring). Whole modules are held out for validation. Writes "
        "train.jsonl, val.jsonl and report.json (counts, skips by reason, examples) for `forge sft`.",
    )
    p.set_defaults(handler=_synth_sft)

    p = add_command(
        sub,
        "images",
        config_cls=ImageDataConfig,
        help="prepare an image set (the built-in digits or a captioned folder) for the image models",
        description="Read scikit-learn's 8x8 digits with generated captions in varied wording (default), "
        "or a folder of images with captions.jsonl ({'file', 'caption'} per line); convert them to one "
        "size and channel count, split train/val and write array shards, captions and manifest.json. "
        "Unreadable images and bad lines are skipped and listed in the manifest.",
    )
    p.set_defaults(handler=_images)


def _prepare(args: argparse.Namespace) -> None:
    config = from_args(PrepareConfig, args, extra={"inputs": list(args.inputs)} if args.inputs else None)
    manifest = prepare(config)
    print(f"kept {manifest['documents']:,} documents → {config.out} (see {config.out}/report.md)")


def _synth_sft(args: argparse.Namespace) -> None:
    config = from_args(SynthSftConfig, args)
    report = synthesize(config)
    kinds, train, val = report["conversations"], report["train"], report["val"]
    print(
        f"{kinds['write'] + kinds['explain']:,} conversations (write {kinds['write']:,}, explain "
        f"{kinds['explain']:,}): train {train['conversations']:,}, val {val['conversations']:,} "
        f"({val['modules']} modules held out) → {config.out} (see {config.out}/report.json)"
    )


def _images(args: argparse.Namespace) -> None:
    config = from_args(ImageDataConfig, args)
    manifest = prepare_images(config)
    counts, shape = manifest["counts"], "x".join(map(str, manifest["shape"]))
    print(
        f"train {counts['train']:,} images, val {counts['val']:,}, skipped {counts['skipped']:,} "
        f"({shape}) → {config.out} (see {config.out}/manifest.json)"
    )


def _tokenize(args: argparse.Namespace) -> None:
    config = from_args(TokenizeConfig, args)
    meta = tokenize_docs(args.docs, args.tokenizer, args.out, config)
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    print(
        f"train {train['tokens']:,} tokens, val {val['tokens']:,} tokens "
        f"({meta['splits']['train']['bytes_per_token']:.2f} bytes/token) → {args.out}"
    )
    if "mix" in meta:
        _print_mix(meta["mix"])


def _print_mix(mix: dict) -> None:
    print(f"{'domain':<12} {'docs':>9} {'natural':>13} {'share':>6} {'target':>6} {'factor':>7} "
          f"{'written':>13} {'share':>6}")  # fmt: skip
    for name, row in mix["domains"].items():
        print(f"{name:<12} {row['documents']:>9,} {row['natural_tokens']:>13,} {row['natural_share']:>6.1%} "
              f"{row['target_share']:>6.1%} {row['factor']:>6.2f}x {row['tokens_written']:>13,} "
              f"{row['achieved_share']:>6.1%}")  # fmt: skip
    total = mix["total"]
    print(f"{'total':<12} {total['documents']:>9,} {total['natural_tokens']:>13,} {'':>6} {'':>6} {'':>7} "
          f"{total['tokens_written']:>13,}")  # fmt: skip
    print("the mix applies to the train split; validation keeps the corpus's natural distribution")


# ---- inspect ------------------------------------------------------------------------------------------

COLUMNS = ["id", "text", "source", "domain"]
SAMPLE_LINES, LINE_CHARS = 20, 200
REPORT_KEYS = {"documents_seen", "kept", "removed", "bytes_seen", "bytes_kept", "steps", "kept_by_domain"}
REPORT_KEYS |= {"removed_by_reason", "examples", "counters", "meanings"}


def _inspect(args: argparse.Namespace) -> None:
    if args.samples < 0:
        raise ConfigError(f"--samples must be 0 or more, got {args.samples}")
    directory = Path(args.docs)
    data = _load_report(directory)
    _print_overview(directory, data)
    if args.reason is not None:
        _print_examples(data, args.reason)
    elif args.samples > 0:
        _print_samples(directory, args.samples, args.seed)


def _load_report(directory: Path) -> dict[str, Any]:
    path = directory / "report.json"
    if not path.is_file():
        raise DataError(
            f"{path} not found: {directory} is not a documents directory written by `forge data prepare`; "
            f"write one with `forge data prepare --out {directory}`"
        )
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} cannot be read ({e}); write it again with `forge data prepare`") from e
    missing = REPORT_KEYS - data.keys()
    if missing:
        raise DataError(
            f"{path} lacks {', '.join(sorted(missing))}: it was written by an older forge; "
            f"write it again with `forge data prepare --out {directory}`"
        )
    return data


def _print_overview(directory: Path, data: Mapping[str, Any]) -> None:
    print(f"{directory}: {headline(data)}")
    manifest = directory / "manifest.json"
    if manifest.is_file():
        try:
            info = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(
                f"{manifest} cannot be read ({e}); write it again with `forge data prepare`"
            ) from e
        inputs = ", ".join(info.get("inputs", [])) or "?"
        print(
            f"forge {info.get('forge_version', '?')} · {len(info.get('files', []))} files · inputs: {inputs}"
        )
    for title, (header, rows) in text_tables(data).items():
        _print_table(title, header, rows, numeric_columns(header))
    rows = [[g, k, f"{n:,}"] for g, kinds in data["counters"].items() for k, n in kinds.items()]
    _print_table("Counters", ["group", "kind", "count"], rows, numbers=(2,))


def _print_table(title: str, header: list[str], rows: list[list[str]], numbers: Sequence[int]) -> None:
    """An aligned table with `rich` when it is installed, else as plain text; nothing when empty."""
    if not rows:
        return
    rows = [[_printable(cell) for cell in row] for row in rows]
    try:
        from rich import box
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text
    except ImportError:
        widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
        print(f"\n{title}")
        for row in [header, ["-" * w for w in widths], *rows]:
            cells = [
                c.rjust(w) if i in numbers else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ]
            print("  ".join(cells).rstrip())
        return
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, title_style="bold")
    for i, name in enumerate(header):
        table.add_column(name, justify="right" if i in numbers else "left", overflow="fold", no_wrap=i == 0)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # Text: brackets in data are not rich markup
    print()
    Console(highlight=False).print(table)


def _print_examples(data: Mapping[str, Any], reason: str) -> None:
    examples = data["examples"].get(reason)
    if not examples:
        known = ", ".join(data["examples"]) or "none"
        raise ConfigError(
            f"--reason {reason}: the report holds no examples of it (reasons with examples: {known})"
        )
    count, meaning = data["removed_by_reason"].get(reason, 0), data["meanings"].get(reason, "")
    print(f"\n{reason}: {count:,} removed" + (f" ({meaning})" if meaning else ""))
    for example in examples:
        detail = f": {example['detail']}" if example["detail"] else ""
        print(_printable(f"\n── {example['where']}{detail}"))
        _print_text(example.get("excerpt", ""))


def _print_samples(directory: Path, n: int, seed: int) -> None:
    documents = _sample_documents(directory, n, seed)
    if not documents:
        print(f"\n(no documents: {directory} has no docs-*.parquet rows)")
    for i, doc in enumerate(documents, 1):
        where = f"{doc['id']}  (source {doc['source']}, domain {doc['domain']})"
        print(_printable(f"\n── sample {i}/{len(documents)}: {where}"))
        _print_text(doc["text"])


def _print_text(text: str) -> None:
    lines = text.splitlines()
    for line in lines[:SAMPLE_LINES]:
        cut = line[:LINE_CHARS] + ("…" if len(line) > LINE_CHARS else "")
        print(_printable(f"   {cut}"))
    if len(lines) > SAMPLE_LINES:
        print(f"   … {len(lines) - SAMPLE_LINES:,} more lines")


def _sample_documents(directory: Path, n: int, seed: int) -> list[dict[str, str]]:
    """`n` documents drawn reproducibly from the docs-*.parquet files; only the row groups holding them
    are read, in small batches (the sample is chosen from the row counts in the files' metadata)."""
    files = {path: _open_parquet(path) for path in sorted(directory.glob("docs-*.parquet"))}
    total = sum(f.metadata.num_rows for f in files.values())
    picks = sorted(random.Random(seed).sample(range(total), min(n, total)))
    documents: list[dict[str, str]] = []
    start = 0
    for path, file in files.items():
        try:
            for group in range(file.metadata.num_row_groups):
                size = file.metadata.row_group(group).num_rows
                offsets = [p - start for p in picks if start <= p < start + size]
                start += size
                if offsets:
                    documents += _read_rows(file, group, offsets)
        except (pa.ArrowException, ValueError, KeyError) as e:
            raise DataError(f"{path}: cannot read the columns {', '.join(COLUMNS)} ({e})") from e
    return documents


def _open_parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path} is not a readable Parquet file ({e}); run `forge data prepare` again") from e


def _read_rows(file: pq.ParquetFile, group: int, offsets: list[int]) -> list[dict[str, str]]:
    """The rows at `offsets` (sorted) of one row group."""
    rows: list[dict[str, str]] = []
    start = 0
    for batch in file.iter_batches(batch_size=256, row_groups=[group], columns=COLUMNS):
        rows += [
            batch.slice(o - start, 1).to_pylist()[0] for o in offsets if start <= o < start + batch.num_rows
        ]
        start += batch.num_rows
        if start > offsets[-1]:
            break
    return rows


def _printable(text: str) -> str:
    """`text` with control characters shown escaped, so a document cannot drive the terminal."""
    return re.sub(
        r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]",
        lambda m: m.group().encode("unicode_escape").decode(),
        text,
    )
