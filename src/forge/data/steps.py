"""The per-document steps of `forge data prepare`, run inside one task over its input shard.

    read → decode → corruption → normalise (+ length) → C4 lines → quality → safety → language → PII

Each step counts documents and bytes in and out (the report's funnel) and removals by reason. A task
writes the documents that pass, with the facts deduplication needs and nothing more, to
`clean-NNNNN.parquet` in the work directory: id, text, source, domain, UTF-8 bytes, the 16-byte text
digest (exact dedup), the MinHash signature (verification by estimate), one column per LSH band
(`band_00`, …), so that the driver reads one band of every shard at a time and never the texts, and,
with `--boilerplate-min-docs`, the hashes of the lines that may be boilerplate.
"""

import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from forge.data import langid, quality, safety
from forge.data.clean import corruption, decode, length_problem, normalize
from forge.data.dedup import MinHasher, line_hashes, text_digest
from forge.data.langid import LanguageFilter
from forge.data.report import Report
from forge.data.sources import InputUnit, iter_unit
from forge.data.tasks import complete
from forge.io import write_with

# the last, "minhash", is shingling, then signatures and band hashes (timed with writing the task's file)
STEPS = ["read", "decode", "corruption", "normalise", "c4_lines", "quality", "safety", "language", "pii"]
STEPS.append("minhash")


# a step: text → (new text, None, "") to keep it (changed or not), or (None, reason, detail) to remove it
Step = Callable[[str], tuple[str | None, str | None, str]]


@dataclass
class _Tally:
    docs_in: int = 0
    bytes_in: int = 0
    docs_out: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    changed: int = 0
    removed: Counter[str] = field(default_factory=Counter)


class Funnel:
    """Runs the steps on each document and counts, per step, what went in, came out and was removed."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.tallies = {name: _Tally() for name in STEPS}

    def run(self, name: str, text: str, source: str, step: Step) -> str | None:
        """Apply `step` to `text` as step `name`; the new text, or None if removed (then reported)."""
        tally = self.tallies[name]
        start = time.perf_counter()
        new, reason, detail = step(text)
        tally.seconds += time.perf_counter() - start
        size = len(text.encode("utf-8"))
        tally.docs_in += 1
        tally.bytes_in += size
        if new is None:
            tally.removed[reason or name] += 1
            self.report.remove(reason or name, source, detail, text)
            return None
        tally.docs_out += 1
        tally.bytes_out += size if new is text else len(new.encode("utf-8"))
        tally.changed += new is not text and new != text
        return new

    def skip(self, name: str, nbytes: int, reason: str, source: str) -> None:
        """Count a document removed by step `name` before it had a text (undecodable, unreadable)."""
        tally = self.tallies[name]
        tally.docs_in += 1
        tally.bytes_in += nbytes
        tally.removed[reason] += 1
        self.report.remove(reason, source)

    def to_report(self) -> None:
        for name, t in self.tallies.items():
            if t.docs_in or name == "read":
                self.report.step(name, docs_in=t.docs_in, bytes_in=t.bytes_in, docs_out=t.docs_out,
                                 bytes_out=t.bytes_out, seconds=t.seconds, removed=t.removed,
                                 changed=t.changed)  # fmt: skip


class Cleaner:
    """The per-document steps with their filters loaded once (a blocklist, a language model)."""

    def __init__(self, config: Any, funnel: Funnel) -> None:
        self.config, self.funnel, self.report = config, funnel, funnel.report
        self.blocklist = safety.Blocklist.load(config.safety.blocklist)
        self.languages = LanguageFilter(config.language) if config.language.languages else None
        self.report.describe({**quality.REASONS, **safety.REASONS, **langid.REASONS})

    def __call__(self, data: bytes | str, source: str, domain: str) -> str | None:
        """The text after every step, or None when one removes it."""
        config, run = self.config, self.funnel.run
        start = time.perf_counter()
        text, reason = decode(data)
        self.funnel.tallies["decode"].seconds += time.perf_counter() - start
        if text is None:
            self.funnel.skip("decode", len(data), reason or "undecodable", source)
            return None
        code = quality.is_code(source, domain)
        steps: list[tuple[str, Step]] = [
            ("decode", lambda t: (t, None, "")),  # counts the decoded text (timed above)
            (
                "corruption",
                lambda t: _check(t, corruption(t, max_control_fraction=config.max_control_fraction)),
            ),
            ("normalise", lambda t: _normalised(t, config.min_chars, config.max_chars)),
        ]
        q = config.quality
        if q.enabled and not code and q.c4_lines:
            steps.append(("c4_lines", self._c4_lines))
        if q.enabled:
            steps.append(("quality", lambda t: _check(t, quality.quality_problem(t, code=code, config=q))))
        steps.append(("safety", lambda t: _check(t, self.blocklist.problem(t, config.safety))))
        if self.languages is not None and not code:
            languages = self.languages
            steps.append(("language", lambda t: _check(t, languages.problem(t))))
        if config.safety.scrub_pii:
            steps.append(("pii", self._scrub))
        current = text
        for name, step in steps:
            new = run(name, current, source, step)
            if new is None:
                return None
            current = new
        return current

    def _c4_lines(self, text: str) -> tuple[str | None, str | None, str]:
        new, removed = quality.filter_lines(text, self.config.quality)
        if removed:
            self.report.count("lines_removed", "c4", removed)
        return new, None, ""

    def _scrub(self, text: str) -> tuple[str | None, str | None, str]:
        new, counts = safety.scrub_pii(text)
        for kind, n in counts.items():
            self.report.count("pii", kind, n)
        return (new if counts else text), None, ""


def _check(text: str, problem: tuple[str, str] | str | None) -> tuple[str | None, str | None, str]:
    if problem is None:
        return text, None, ""
    if isinstance(problem, str):
        return None, problem, ""
    return None, problem[0], problem[1]


def _normalised(text: str, min_chars: int, max_chars: int) -> tuple[str | None, str | None, str]:
    text = normalize(text)
    problem = length_problem(text, min_chars=min_chars, max_chars=max_chars)
    return (None, problem, f"{len(text):,} characters") if problem else (text, None, "")


def clean_task(config: Any, index: int, units: list[InputUnit], work_dir: str) -> dict[str, Any]:
    """Run the per-document steps over `units` (task `index` of a `PrepareConfig` run); write
    `clean-NNNNN.parquet` and the statistics that mark the task complete."""
    report = Report()
    funnel = Funnel(report)
    cleaner = Cleaner(config, funnel)
    hasher = MinHasher(config.minhash)
    rows: dict[str, list[Any]] = {name: [] for name in ("id", "text", "source", "domain")}
    shingle_sets: list[np.ndarray] = []
    lines: list[np.ndarray] = []  # candidate boilerplate line hashes per document, when asked for
    read = funnel.tallies["read"]

    def on_problem(reason: str, where: str, detail: str) -> None:
        read.docs_in += 1
        read.removed[reason] += 1
        report.remove(reason, where, detail)
        print(f"warning: {where}: {detail} (skipped)", file=sys.stderr)

    def shingle(text: str) -> tuple[str, None, str]:
        shingle_sets.append(hasher.shingles(text))
        return text, None, ""

    for unit in units:
        documents = iter_unit(
            unit, text_field=config.text_field, domain_field=config.domain_field, on_problem=on_problem
        )
        for raw in documents:
            size = len(raw.data) if isinstance(raw.data, bytes) else len(raw.data.encode("utf-8"))
            read.docs_in, read.docs_out = read.docs_in + 1, read.docs_out + 1
            read.bytes_in, read.bytes_out = read.bytes_in + size, read.bytes_out + size
            report.seen += 1
            text = cleaner(raw.data, raw.source, raw.domain)
            if text is None:
                continue
            for name, value in zip(rows, (raw.id, text, raw.source, raw.domain), strict=True):
                rows[name].append(value)
            if config.minhash.enabled:
                funnel.run("minhash", text, raw.source, shingle)
            else:
                shingle_sets.append(np.zeros(0, np.uint64))
            if config.boilerplate_min_docs:
                code = quality.is_code(raw.source, raw.domain)
                lines.append(line_hashes(text, code=code, min_chars=config.boilerplate_min_chars))
    start = time.perf_counter()
    _write_clean(Path(work_dir), index, rows, shingle_sets, hasher, lines)
    funnel.tallies["minhash"].seconds += time.perf_counter() - start  # signatures, bands, the task's file
    funnel.to_report()
    return complete(Path(work_dir), "clean", index, report.to_dict())


def _write_clean(
    work_dir: Path,
    index: int,
    rows: dict[str, list[Any]],
    shingle_sets: list[np.ndarray],
    hasher: MinHasher,
    lines: list[np.ndarray],
) -> None:
    signatures = hasher.signatures(shingle_sets)  # (D, P) uint32
    bands = hasher.band_hashes(signatures)  # (D, bands) uint64
    columns: dict[str, Any] = {
        "id": pa.array(rows["id"], pa.string()),
        "text": pa.array(rows["text"], pa.string()),
        "source": pa.array(rows["source"], pa.string()),
        "domain": pa.array(rows["domain"], pa.string()),
        "nbytes": pa.array([len(t.encode("utf-8")) for t in rows["text"]], pa.int64()),
        "digest": pa.array([text_digest(t) for t in rows["text"]], pa.binary(16)),
        "has_shingles": pa.array([len(s) > 0 for s in shingle_sets], pa.bool_()),
        "signature": pa.array([s.tobytes() for s in signatures], pa.binary()),
    }
    if lines:
        columns["line_hashes"] = pa.array([h.tolist() for h in lines], pa.list_(pa.uint64()))
    for b in range(bands.shape[1]):
        columns[f"band_{b:02d}"] = pa.array(bands[:, b], pa.uint64())
    table = pa.table(columns)
    write_with(
        work_dir / f"clean-{index:05d}.parquet", lambda tmp: pq.write_table(table, tmp, compression="zstd")
    )
