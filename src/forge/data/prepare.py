"""`forge data prepare`: raw inputs → clean, deduplicated documents in Parquet shards, with a report.

    read (sources) → decode → reject corrupted → normalise → bound length → drop exact duplicates → write

The output directory holds `docs-00000.parquet` … (columns `id`, `text`, `source`, `domain`),
`manifest.json` (inputs, config, counts, files) and `report.json` / `report.md` (kept and removed per
reason, with examples). It is written to a temporary directory and renamed into place, so a crash never
leaves half a corpus behind and an earlier output stays intact until the new one is complete.
"""

import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from forge import __version__
from forge.config import to_dict
from forge.data.clean import corruption, decode, length_problem, normalize
from forge.data.dedup import ExactDedup
from forge.data.report import Report
from forge.data.sources import check_inputs, iter_inputs, stdlib_root
from forge.errors import ConfigError, DataError
from forge.io import atomic_dir, write_json

SCHEMA = pa.schema(
    [("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("domain", pa.string())]
)


@dataclass(frozen=True, kw_only=True)
class PrepareConfig:
    """Options of `forge data prepare`."""

    inputs: tuple[str, ...] = ()
    """folders, .jsonl/.jsonl.gz or .parquet files (none: this Python's standard library)"""
    out: str = "data/docs"
    """output directory for the document shards, manifest and report"""
    include: tuple[str, ...] = ()
    """glob patterns of files to read from folders, e.g. '*.py,*.md' (default: known text and code
    extensions)"""
    exclude: tuple[str, ...] = ()
    """glob patterns of files to skip in folders, e.g. 'tests/*,*_pb2.py' (.git, __pycache__,
    node_modules, .venv and site-packages are always skipped)"""
    text_field: str = "text"
    """JSONL field / Parquet column holding the text"""
    domain_field: str = "domain"
    """JSONL field / Parquet column holding the domain tag (absent: the file's name)"""
    min_chars: int = 32
    """drop documents shorter than this many characters after normalisation"""
    max_chars: int = 1_000_000
    """drop documents longer than this many characters after normalisation (0 = no limit)"""
    max_control_fraction: float = 0.01
    """drop documents in which more than this fraction of characters are control characters (binary)"""
    dedup: bool = True
    """drop documents whose normalised text equals an earlier document's"""
    shard_megabytes: int = 256
    """start a new docs-*.parquet file after this many megabytes of text"""
    progress: bool = True
    """show a progress bar"""

    def __post_init__(self) -> None:
        if self.min_chars < 0:
            raise ConfigError(f"--min-chars must be 0 or more, got {self.min_chars}")
        if self.max_chars < 0 or (self.max_chars and self.max_chars < self.min_chars):
            raise ConfigError(
                f"--max-chars must be 0 (no limit) or at least --min-chars ({self.min_chars}), "
                f"got {self.max_chars}"
            )
        if not 0 <= self.max_control_fraction <= 1:
            raise ConfigError(
                f"--max-control-fraction must be between 0 and 1, got {self.max_control_fraction}"
            )
        if self.shard_megabytes < 1:
            raise ConfigError(f"--shard-megabytes must be at least 1, got {self.shard_megabytes}")


class _ShardWriter:
    """Parquet files of at most `shard_bytes` of text each, written in row groups."""

    def __init__(self, directory: Path, shard_bytes: int, row_group_bytes: int = 16 << 20) -> None:
        self.directory, self.shard_bytes, self.row_group_bytes = directory, shard_bytes, row_group_bytes
        self.files: list[str] = []
        self._rows: dict[str, list[str]] = {name: [] for name in SCHEMA.names}
        self._buffered = self._in_file = 0
        self._writer: pq.ParquetWriter | None = None

    def add(self, doc_id: str, text: str, source: str, domain: str) -> None:
        for name, value in zip(SCHEMA.names, (doc_id, text, source, domain), strict=True):
            self._rows[name].append(value)
        size = len(text.encode("utf-8"))
        self._buffered += size
        self._in_file += size
        if self._buffered >= self.row_group_bytes or self._in_file >= self.shard_bytes:
            self._flush()
        if self._in_file >= self.shard_bytes:
            self._close_file()

    def _flush(self) -> None:
        if not self._rows["id"]:
            return
        if self._writer is None:
            name = f"docs-{len(self.files):05d}.parquet"
            self.files.append(name)
            self._writer = pq.ParquetWriter(self.directory / name, SCHEMA, compression="zstd")
        self._writer.write_table(pa.table(self._rows, schema=SCHEMA))
        self._rows = {name: [] for name in SCHEMA.names}
        self._buffered = 0

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._in_file = 0

    def close(self) -> list[str]:
        self._flush()
        self._close_file()
        return self.files


def _check_out(out: Path) -> None:
    """Refuse to replace a non-empty directory that `forge data prepare` did not write."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.json").is_file())):
        raise ConfigError(
            f"--out {out} exists and is not a documents directory written by `forge data prepare`; "
            "choose a new directory (it would be replaced)"
        )


def _describe_inputs(config: PrepareConfig) -> list[str]:
    if config.inputs:
        return [str(Path(p).resolve()) for p in config.inputs]
    return [f"standard library of Python {platform.python_version()} ({stdlib_root()}) and pydoc_data.topics"]


def prepare(config: PrepareConfig) -> dict[str, Any]:
    """Run the data stage as configured; return the manifest (also written to `out/manifest.json`)."""
    out = Path(config.out)
    _check_out(out)
    check_inputs(config.inputs)  # before the progress bar starts
    report, dedup = Report(), ExactDedup()

    def on_problem(reason: str, where: str, detail: str) -> None:
        report.remove(reason, where, detail)
        print(f"warning: {where}: {detail} (skipped)", file=sys.stderr)

    documents = iter_inputs(
        config.inputs,
        include=config.include,
        exclude=config.exclude,
        text_field=config.text_field,
        domain_field=config.domain_field,
        on_problem=on_problem,
    )
    with atomic_dir(out) as tmp:
        writer = _ShardWriter(tmp, config.shard_megabytes << 20)
        for raw in tqdm(documents, unit="doc", desc="preparing", disable=not config.progress):
            report.seen += 1
            text, problem = decode(raw.data)
            if text is not None:
                problem = corruption(text, max_control_fraction=config.max_control_fraction)
            if text is not None and problem is None:
                text = normalize(text)
                problem = length_problem(text, min_chars=config.min_chars, max_chars=config.max_chars)
            detail = ""
            if text is not None and problem is None and config.dedup:
                first = dedup.duplicate_of(text, raw.id)
                problem, detail = ("exact_duplicate", f"same text as {first}") if first else (None, "")
            if problem is not None or text is None:
                report.remove(problem or "undecodable", raw.source, detail)
                continue
            writer.add(raw.id, text, raw.source, raw.domain)
            report.keep(raw.domain, len(text))
        files = writer.close()
        kept = sum(report.kept.values())
        if kept == 0:
            raise DataError(
                f"no document was kept out of {report.seen:,} read from {_describe_inputs(config)}; "
                f"removed: {dict(report.removed)}. Check the inputs, --include and --min-chars"
            )
        manifest = {
            "forge_version": __version__,
            "inputs": _describe_inputs(config),
            "config": to_dict(config),
            "documents": kept,
            "chars": sum(report.kept_chars.values()),
            "files": files,
        }
        report.write(tmp)
        write_json(tmp / "manifest.json", manifest)
    return manifest
