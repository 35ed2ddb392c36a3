"""`forge data prepare`: raw inputs → clean, deduplicated documents in Parquet shards, with a report.

    plan tasks → [per task] read → decode → corruption → normalise → C4 lines → quality → safety
               → language → PII scrub → [driver] exact dedup → near dedup (MinHash LSH)
               → [per task] write docs-NNNNN.parquet → report

The output directory holds `docs-00000.parquet` … (columns `id`, `text`, `source`, `domain`),
`manifest.json` (inputs, config, counts, files) and `report.json` / `report.md` / `report.html` (every
step's documents and bytes in and out, removals by reason with examples, near-duplicate pairs).

Design choices:
- the inputs are cut into tasks of about `--shard-megabytes` of input each, in reading order; a task is
  the unit of parallel work, of resumption and of output (one docs file per task). Tasks do not depend on
  the number of workers, so neither does the output;
- tasks write to a work directory next to the output (`OUT.work/`) with a completion marker each; a run
  that stops (crash, Ctrl-C, a killed worker) is resumed by running the same command again, and only the
  unfinished tasks run. A changed configuration or input list starts the work afresh;
- deduplication moves no documents: the driver reads the digest column, then one LSH band column at a
  time from every task's file, and the texts of candidate pairs only, to verify them;
- the output directory is written whole (temporary directory + rename) and the work directory removed
  only after it is in place, so no run leaves half a corpus behind.
"""

import hashlib
import json
import platform
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from forge import __version__
from forge.config import to_dict
from forge.data import quality
from forge.data.dedup import (
    MinHasher,
    NearDedupConfig,
    boilerplate,
    bucket_pairs,
    clusters_to_drop,
    jaccard,
    strip_lines,
)
from forge.data.langid import LanguageConfig
from forge.data.quality import QualityConfig
from forge.data.report import Report
from forge.data.safety import SafetyConfig
from forge.data.sources import InputUnit, plan_units, stdlib_root
from forge.data.steps import clean_task
from forge.data.tasks import EXECUTORS, marker_path, run_tasks
from forge.errors import ConfigError, DataError
from forge.io import atomic_dir, write_json
from forge.runtime import available_cores

SCHEMA = pa.schema(
    [("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("domain", pa.string())]
)
WORK_VERSION = 1


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
    quality: QualityConfig = field(default_factory=QualityConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    minhash: NearDedupConfig = field(default_factory=NearDedupConfig)
    boilerplate_min_docs: int = 0
    """remove lines found in at least this many documents (licence headers, banners), keeping each in
    the first document that has it; in code only comment lines count (0 = off)"""
    boilerplate_min_chars: int = 20
    """lines shorter than this (after stripping spaces) are never boilerplate"""
    shard_megabytes: float = 8
    """megabytes of input per task; each task is a unit of parallel work and of resumption, and writes
    one docs-*.parquet file"""
    workers: int = 0
    """processes running tasks (0 = the cores available; 1 = in this process)"""
    executor: str = "local"
    """local (this machine's processes) or ray (a Ray cluster; see --ray-address)"""
    ray_address: str = ""
    """Ray cluster to join with --executor ray (empty: start Ray on this machine; 'auto': the running
    cluster)"""
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
        if self.shard_megabytes <= 0:
            raise ConfigError(f"--shard-megabytes must be more than 0, got {self.shard_megabytes}")
        for name in ("boilerplate_min_docs", "boilerplate_min_chars"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        if self.boilerplate_min_docs == 1:
            raise ConfigError("--boilerplate-min-docs 1 would remove every line; use 0 (off) or 2 and more")
        if self.workers < 0:
            raise ConfigError(f"--workers must be 0 (all cores) or more, got {self.workers}")
        if self.executor not in EXECUTORS:
            raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")


def plan_tasks(units: list[InputUnit], task_bytes: int) -> list[list[InputUnit]]:
    """Consecutive groups of units of about `task_bytes` each (a larger unit is a task of its own)."""
    tasks: list[list[InputUnit]] = []
    current: list[InputUnit] = []
    size = 0
    for unit in units:
        if current and size + unit.size > task_bytes:
            tasks.append(current)
            current, size = [], 0
        current.append(unit)
        size += unit.size
    if current:
        tasks.append(current)
    return tasks


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


def _work_dir(config: PrepareConfig, tasks: list[list[InputUnit]]) -> Path:
    """`OUT.work/`, kept if it belongs to this very plan (same config and inputs), else started afresh."""
    out = Path(config.out)
    work = out.with_name(out.name + ".work")
    plan = {
        "version": WORK_VERSION,
        "config": to_dict(config),
        "tasks": [[u.__dict__ for u in t] for t in tasks],
    }
    fingerprint = hashlib.blake2b(json.dumps(plan, sort_keys=True).encode(), digest_size=16).hexdigest()
    stamp = work / "plan.json"
    if work.exists():
        try:
            same = json.loads(stamp.read_text())["fingerprint"] == fingerprint
        except (OSError, ValueError, KeyError):
            same = False
        if not same:
            print(f"note: {work} holds work of another configuration; starting afresh", file=sys.stderr)
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not stamp.exists():
        write_json(stamp, {"fingerprint": fingerprint, "tasks": len(tasks), "forge_version": __version__})
    return work


def prepare(config: PrepareConfig) -> dict[str, Any]:
    """Run the data stage as configured; return the manifest (also written to `out/manifest.json`)."""
    out = Path(config.out)
    _check_out(out)
    units = plan_units(config.inputs, include=config.include, exclude=config.exclude)
    tasks = plan_tasks(units, int(config.shard_megabytes * 2**20))
    work = _work_dir(config, tasks)
    workers = config.workers or available_cores()

    stats: dict[int, dict[str, Any]] = {}
    todo = []
    for i in range(len(tasks)):
        if marker_path(work, "clean", i).exists():
            stats[i] = json.loads(marker_path(work, "clean", i).read_text())
        else:
            todo.append(i)
    if stats and todo:
        print(f"resuming: {len(stats)} of {len(tasks)} tasks already done in {work}", file=sys.stderr)
    arguments = [(config, i, tasks[i], str(work)) for i in todo]
    results = run_tasks(
        clean_task,
        arguments,
        executor=config.executor,
        workers=workers,
        ray_address=config.ray_address,
        desc="cleaning",
        progress=config.progress,
    )
    for k, result in results:
        stats[todo[k]] = result
    report = Report()
    for i in range(len(tasks)):
        report.merge(Report.from_dict(stats[i]))

    drops, pairs, alive = deduplicate(config, work, len(tasks), report)
    common_lines = find_boilerplate(config, work, len(tasks), alive)
    with atomic_dir(out) as tmp:
        files: list[str] = []
        written = Report()
        for i in range(len(tasks)):
            name, part = write_task(config, work, i, drops.get(i, {}), common_lines, tmp)
            written.merge(part)
            if name:
                files.append(name)
        report.merge(written)
        kept = report.to_dict()["kept"]
        if kept == 0:
            raise DataError(
                f"no document was kept out of {report.seen:,} read from {_describe_inputs(config)}; "
                f"removed: {report.to_dict()['removed_by_reason']}. "
                "Check the inputs, --include, --min-chars and the --quality.* thresholds"
            )
        manifest = {
            "forge_version": __version__,
            "inputs": _describe_inputs(config),
            "config": to_dict(config),
            "documents": kept,
            "chars": sum(row["chars"] for row in report.to_dict()["kept_by_domain"].values()),
            "files": files,
        }
        extra = {
            "inputs": manifest["inputs"],
            "config": manifest["config"],
            "near_duplicate_pairs": pairs[:50],
        }
        report.write(tmp, extra=extra)
        write_json(tmp / "manifest.json", manifest)
    shutil.rmtree(work, ignore_errors=True)
    return manifest


Drops = dict[int, dict[int, tuple[str, str]]]  # task → row → (reason, detail)


def _clean_file(work: Path, index: int) -> Path:
    return work / f"clean-{index:05d}.parquet"


def deduplicate(
    config: PrepareConfig, work: Path, n_tasks: int, report: Report
) -> tuple[Drops, list[dict], np.ndarray]:
    """Exact, then near-duplicate removal over every task's output; returns the rows to drop per task,
    the verified near-duplicate pairs (kept id, removed id, similarity), most similar first, and which
    documents survive (by global index)."""
    files = [_clean_file(work, i) for i in range(n_tasks)]
    tables = [pq.read_table(f, columns=["id", "nbytes", "digest", "has_shingles"]) for f in files]
    offsets = np.cumsum([0] + [t.num_rows for t in tables])
    ids = [i for t in tables for i in t.column("id").to_pylist()]
    nbytes = np.array([b for t in tables for b in t.column("nbytes").to_pylist()], dtype=np.int64)
    n = len(ids)
    alive = np.ones(n, dtype=bool)
    dropped: dict[int, tuple[str, str]] = {}
    start = time.perf_counter()
    if config.dedup and n:
        digests = np.array([d for t in tables for d in t.column("digest").to_pylist()], dtype="S16")
        _, first, inverse = np.unique(digests, return_index=True, return_inverse=True)
        first_of = first[inverse.ravel()]  # (N,) the first document with the same text
        for i in np.flatnonzero(first_of != np.arange(n)).tolist():
            dropped[i] = ("exact_duplicate", f"same text as {ids[first_of[i]]}")
        alive = first_of == np.arange(n)
    report.step("exact_dedup", docs_in=n, bytes_in=int(nbytes.sum()), docs_out=int(alive.sum()),
                bytes_out=int(nbytes[alive].sum()), seconds=time.perf_counter() - start,
                removed={"exact_duplicate": len(dropped)})  # fmt: skip
    pairs: list[dict] = []
    if config.minhash.enabled and n:
        start = time.perf_counter()
        has_shingles = np.array([h for t in tables for h in t.column("has_shingles").to_pylist()], dtype=bool)
        verified = _near_pairs(config.minhash, files, offsets, alive & has_shingles)
        similarity = {(i, j): s for i, j, s in verified}
        near = clusters_to_drop(n, similarity)
        for i, keep in near.items():
            direct = similarity.get((keep, i))
            how = f"Jaccard {direct:.2f}" if direct else "through a chain of near-duplicates"
            dropped[i] = ("near_duplicate", f"near-duplicate of {ids[keep]} ({how})")
        before = alive.copy()
        alive[list(near)] = False
        report.step("near_dedup", docs_in=int(before.sum()), bytes_in=int(nbytes[before].sum()),
                    docs_out=int(alive.sum()), bytes_out=int(nbytes[alive].sum()),
                    seconds=time.perf_counter() - start, removed={"near_duplicate": len(near)})  # fmt: skip
        pairs = [{"kept": ids[i], "removed": ids[j], "similarity": round(s, 3)} for i, j, s in verified]
        pairs.sort(key=lambda p: -p["similarity"])
    drops: Drops = defaultdict(dict)
    for i, why in dropped.items():
        task = int(np.searchsorted(offsets, i, side="right")) - 1
        drops[task][i - int(offsets[task])] = why
    return dict(drops), pairs, alive


def find_boilerplate(config: PrepareConfig, work: Path, n_tasks: int, alive: np.ndarray) -> dict[int, int]:
    """{line hash: global index of the document that keeps it} over the surviving documents."""
    if not config.boilerplate_min_docs:
        return {}
    hashes, documents, offset = [], [], 0
    for i in range(n_tasks):
        column = pq.read_table(_clean_file(work, i), columns=["line_hashes"]).column(0).combine_chunks()
        flat = column.flatten().to_numpy()
        owner = offset + column.value_parent_indices().to_numpy()
        keep = alive[owner] if len(owner) else np.zeros(0, dtype=bool)
        hashes.append(flat[keep])
        documents.append(owner[keep])
        offset += len(column)
    return boilerplate(np.concatenate(hashes), np.concatenate(documents), config.boilerplate_min_docs)


def _near_pairs(
    config: NearDedupConfig, files: list[Path], offsets: np.ndarray, valid: np.ndarray
) -> list[tuple[int, int, float]]:
    """Candidate pairs from every LSH band, verified: (i, j, similarity) with i < j and similarity at
    least the threshold. One band column of every file is in memory at a time."""
    found = []
    for b in range(config.bands):
        column = f"band_{b:02d}"
        hashes = np.concatenate([pq.read_table(f, columns=[column]).column(0).to_numpy() for f in files])
        found.append(bucket_pairs(hashes, valid))
    candidates = np.unique(np.concatenate(found), axis=0) if found else np.zeros((0, 2), np.int64)
    if not len(candidates):
        return []
    needed = np.unique(candidates)
    hasher = MinHasher(config)
    features: dict[int, np.ndarray] = {}
    column = "text" if config.verify == "exact" else "signature"
    for task, path in enumerate(files):
        lo, hi = offsets[task], offsets[task + 1]
        rows = needed[(needed >= lo) & (needed < hi)]
        if not len(rows):
            continue
        values = pq.read_table(path, columns=[column]).column(0).take(pa.array(rows - lo)).to_pylist()
        for row, value in zip(rows, values, strict=True):
            if config.verify == "exact":
                features[int(row)] = hasher.shingles(value)
            else:
                features[int(row)] = np.frombuffer(value, dtype=np.uint32)
    out = []
    for i, j in candidates.tolist():
        first, second = features[i], features[j]
        exact = config.verify == "exact"
        similarity = jaccard(first, second) if exact else float((first == second).mean())
        if similarity >= config.threshold:
            out.append((i, j, similarity))
    return out


def write_task(
    config: PrepareConfig,
    work: Path,
    index: int,
    drops: dict[int, tuple[str, str]],
    common_lines: dict[int, int],
    out_dir: Path,
) -> tuple[str, Report]:
    """Write task `index`'s surviving documents to `out_dir/docs-NNNNN.parquet` (none: no file), without
    the boilerplate lines that an earlier document keeps; the report of what it kept and of the
    duplicates it dropped, with their text."""
    report = Report()
    table = pq.read_table(_clean_file(work, index), columns=["id", "text", "source", "domain", "nbytes"])
    keep = np.ones(table.num_rows, dtype=bool)
    texts, sources = table.column("text").to_pylist(), table.column("source").to_pylist()
    for row, (reason, detail) in sorted(drops.items()):
        keep[row] = False
        report.remove(reason, sources[row], detail, texts[row])
    nbytes = np.asarray(table.column("nbytes").to_numpy()).copy()
    if common_lines:
        _strip_boilerplate(config, work, index, table, texts, nbytes, keep, common_lines, report)
    rows = np.flatnonzero(keep)
    kept_bytes = int(nbytes[rows].sum())  # the duplicates were counted by the dedup steps
    report.step("write", docs_in=len(rows), bytes_in=kept_bytes, docs_out=len(rows), bytes_out=kept_bytes)
    domains = table.column("domain").to_pylist()
    for row in rows.tolist():
        report.keep(domains[row], len(texts[row]), int(nbytes[row]))
    if not len(rows):
        return "", report
    kept = pa.table(
        {
            "id": table.column("id").take(pa.array(rows)),
            "text": pa.array([texts[r] for r in rows.tolist()], pa.string()),
            "source": table.column("source").take(pa.array(rows)),
            "domain": table.column("domain").take(pa.array(rows)),
        },
        schema=SCHEMA,
    )
    name = f"docs-{index:05d}.parquet"
    pq.write_table(kept, out_dir / name, compression="zstd")
    return name, report


def _strip_boilerplate(
    config: PrepareConfig,
    work: Path,
    index: int,
    table: pa.Table,
    texts: list[str],
    nbytes: np.ndarray,
    keep: np.ndarray,
    common_lines: dict[int, int],
    report: Report,
) -> None:
    """Remove, in place, from each kept document the boilerplate lines that another document keeps."""
    offset = sum(pq.read_metadata(_clean_file(work, i)).num_rows for i in range(index))
    sources, domains = table.column("source").to_pylist(), table.column("domain").to_pylist()
    candidates = np.flatnonzero(keep).tolist()
    bytes_in = int(nbytes[candidates].sum())
    changed = lines = 0
    for row in candidates:
        code = quality.is_code(sources[row], domains[row])
        text, removed = strip_lines(
            texts[row], common_lines, offset + row, code=code, min_chars=config.boilerplate_min_chars
        )
        if removed:
            changed, lines = changed + 1, lines + removed
            texts[row], nbytes[row] = text, len(text.encode("utf-8"))
            if not text:
                keep[row] = False
                report.remove("boilerplate_only", sources[row], "every line is boilerplate kept elsewhere")
    out = np.flatnonzero(keep)
    emptied = len(candidates) - len(out)
    report.step("boilerplate_lines", docs_in=len(candidates), bytes_in=bytes_in, docs_out=len(out),
                bytes_out=int(nbytes[out].sum()), changed=changed,
                removed={"boilerplate_only": emptied} if emptied else None)  # fmt: skip
    report.count("lines_removed", "boilerplate", lines)
