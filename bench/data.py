"""The data stage against its peers: forge's pipeline speed, MinHash vs `datasketch`, near-duplicate
precision and recall on planted copies, and the filters vs `datatrove` where it is installed, in one run.

1. Pipeline: `forge.data.prepare.prepare` on the embedded default (this Python's standard library) with
   `--workers` processes, timed end to end (wall clock). Its `report.json` gives each step's documents,
   bytes and seconds; those seconds are worker time summed over processes (the driver's for exact_dedup
   and near_dedup), so a step's docs/s and MB/s are per core, and the pipeline's are given per wall-clock
   second and per core (wall × workers). The `minhash` step times shingling, signatures, band hashes and
   writing the task's file; reading the inputs and starting the worker processes are timed by no step.
   `--limit N` runs on a JSONL of the first N documents instead, for quick trials.
2. MinHash vs `datasketch`, single process each, same documents (the texts of step 1's output plus the
   planted copies of 3) and same parameters: word 5-gram shingles (a word is a run of ASCII letters,
   digits, "_" and non-ASCII characters, ASCII lower-cased, as `forge.data.dedup.word_hashes` splits),
   112 permutations, LSH of 28 bands × 4 rows. Timed for forge: `MinHasher.shingles` of every text,
   `signatures`, `band_hashes`, `bucket_pairs` per band and the union of the candidate pairs. Timed for
   datasketch: the same 5-grams as UTF-8 strings joined by a space (a set per document), `MinHash(num_perm
   =112, seed=1)` filled with `update_batch` through `MinHash.generator` (its fastest CPU path: the
   permutations are made once), inserted into `MinHashLSH(num_perm=112, params=(28, 4))`, then every
   document queried. Each side runs `--repeats` times, the two alternating, and the median is kept (the
   machine may be shared). The hash functions differ (forge: 64-bit word hashes combined, multiply-shift;
   datasketch: SHA-1 of the shingle, affine32), so the candidates differ slightly; both sides' recall of
   the planted pairs is reported. A pair counts as found when it is listed itself: forge lists a bucket's
   members against its first and its neighbour only (linear), datasketch all pairs of a bucket.
3. Precision and recall on planted near-duplicates (seeded): `--planted` originals of at least 100 words
   are drawn from step 1's output (so no two of them are near-duplicates by forge's own verdict), half get
   one copy by `edit_words` with a fraction of words edited drawn uniformly from [0.01, 0.10] (vocabulary:
   the corpus's words), and each copy's true Jaccard of shingle sets is computed. Originals then copies
   go through `prepare` on one worker with quality, safety, PII scrubbing and exact dedup off, so that
   every removal is near-duplicate removal (candidates from bands, exact verification at 0.8,
   `clusters_to_drop`, which keeps the original, the earlier one). Recall: removed copies of true Jaccard
   ≥ 0.8 ÷ copies of true Jaccard ≥ 0.8; precision: the same ÷ all documents removed.
4. datatrove, if importable, one process, each step timed alone over every decoded document of the
   corpus, normalised as forge normalises (what forge's quality step is given): its
   `GopherRepetitionFilter`, `GopherQualityFilter`, `C4QualityFilter` and `FineWebQualityFilter` with
   their defaults, each beside forge's rule group implementing the same published rules (Gopher
   repetition, Gopher quality, C4 document rules, through `forge.data.quality`'s private functions, the
   way `quality_problem` calls them for prose; FineWeb's rules have no forge counterpart); and
   `MinhashDedupSignature` (5-grams, 28 buckets × 4 hashes, seed 1, writing its signature files) over
   step 2's texts, beside forge's MinHash + LSH of step 2. The filters are not chained: chained, the
   first two drop nearly all the code (prose rules on code) and the others would be timed over almost
   nothing. Verdicts differ (datatrove splits words with spaCy, forge on whitespace), so the kept
   counts are printed too. datatrove's English word tokenizer is spaCy's blank model: it needs `spacy`
   installed, nothing downloaded. forge's own per-document steps of step 1 (code rules on code) are
   printed beside, per core.

    python bench/data.py [--workers 2] [--planted 1000] [--limit N] [--repeats 3] [--skip-datatrove]
"""

import argparse
import importlib.metadata
import json
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from forge.data import quality
from forge.data.clean import decode, normalize
from forge.data.dedup import MinHasher, NearDedupConfig, bucket_pairs, edit_words, jaccard
from forge.data.prepare import PrepareConfig, prepare
from forge.data.quality import QualityConfig
from forge.data.safety import SafetyConfig
from forge.data.sources import RawDocument, iter_stdlib
from forge.data.steps import STEPS
from forge.runtime import available_cores

RESULTS = Path(__file__).resolve().parent / "results" / "data.json"
CONFIG = NearDedupConfig()  # 5-grams, 112 permutations, 28 bands × 4 rows, threshold 0.8, seed 1
MB = 1e6


def _rate(count: float, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 else None


def _fmt(value: float | None, width: int = 11) -> str:
    return f"{value:>{width},.1f}" if value is not None else f"{'-':>{width}}"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": available_cores(),
        "threads": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }


def decoded_texts(raw: list[RawDocument]) -> list[RawDocument]:
    """The documents whose bytes decode (what forge's steps after `decode` see), as text."""
    out = []
    for doc in raw:
        text, _ = decode(doc.data)
        if text is not None:
            out.append(RawDocument(id=doc.id, data=text, source=doc.source, domain=doc.domain))
    return out


def write_jsonl(path: Path, records: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_output(out: Path) -> tuple[dict[str, Any], list[str], list[str]]:
    """(report.json, ids, texts) of a `prepare` output directory."""
    report = json.loads((out / "report.json").read_text())
    ids, texts = [], []
    for path in sorted(out.glob("docs-*.parquet")):
        table = pq.read_table(path, columns=["id", "text"])
        ids += table.column("id").to_pylist()
        texts += table.column("text").to_pylist()
    return report, ids, texts


# ---- 1. the full pipeline --------------------------------------------------------------------------------


def run_pipeline(tmp: Path, texts: list[RawDocument], limit: int, workers: int) -> tuple[dict, list[str]]:
    inputs: tuple[str, ...] = ()
    if limit:
        subset = tmp / "stdlib-subset.jsonl"
        write_jsonl(subset, [{"id": d.id, "text": str(d.data), "domain": d.domain} for d in texts])
        inputs = (str(subset),)
    out = tmp / "stdlib"
    start = time.perf_counter()
    prepare(PrepareConfig(inputs=inputs, out=str(out), workers=workers, progress=False))
    wall = time.perf_counter() - start
    report, _, kept_texts = read_output(out)
    steps = []
    print(
        f"\n1. pipeline: {report['documents_seen']:,} documents, {report['bytes_seen'] / MB:.1f} MB, "
        f"{workers} workers, {wall:.1f} s wall clock"
    )
    print(
        f"{'step':<12} {'docs in':>8} {'MB in':>7} {'docs out':>8} {'seconds':>8} {'docs/s/core':>11} "
        f"{'MB/s/core':>11}"
    )
    for s in report["steps"]:
        row = {key: s[key] for key in ("name", "docs_in", "bytes_in", "docs_out", "bytes_out")}
        row |= {
            "seconds": round(s["seconds"], 3),
            "docs_per_s_per_core": _rate(s["docs_in"], s["seconds"]),
            "mb_per_s_per_core": _rate(s["bytes_in"] / MB, s["seconds"]),
            "removed": s["removed"],
        }
        steps.append(row)
        print(
            f"{s['name']:<12} {s['docs_in']:>8,} {s['bytes_in'] / MB:>7.1f} {s['docs_out']:>8,} "
            f"{s['seconds']:>8.2f} {_fmt(row['docs_per_s_per_core'])} {_fmt(row['mb_per_s_per_core'])}"
        )
    seen, nbytes = report["documents_seen"], report["bytes_seen"]
    in_steps = sum(s["seconds"] for s in report["steps"])
    result = {
        "documents": seen,
        "bytes": nbytes,
        "kept": report["kept"],
        "workers": workers,
        "wall_seconds": round(wall, 2),
        "docs_per_s": round(seen / wall, 1),
        "mb_per_s": round(nbytes / MB / wall, 2),
        "docs_per_s_per_core": round(seen / (wall * workers), 1),
        "mb_per_s_per_core": round(nbytes / MB / (wall * workers), 2),
        "step_seconds_total": round(in_steps, 2),
        "steps": steps,
        "removed_by_reason": report["removed_by_reason"],
    }
    print(
        f"{'pipeline':<12} {seen:>8,} {nbytes / MB:>7.1f} {report['kept']:>8,} {wall:>8.2f} "
        f"{_fmt(result['docs_per_s_per_core'])} {_fmt(result['mb_per_s_per_core'])}   "
        f"(wall clock: {result['docs_per_s']:,.1f} docs/s, {result['mb_per_s']:.2f} MB/s)"
    )
    print(
        f"time in the steps {in_steps:.1f} s of {wall * workers:.1f} core-seconds (wall × workers); the "
        "rest: reading the inputs, pool start-up, idle workers, the driver's writing of the output"
    )
    pairs = report["extra"].get("near_duplicate_pairs", [])
    picks = sorted({0, len(pairs) // 2, len(pairs) - 1}) if pairs else []
    result["near_duplicates"] = report["removed_by_reason"].get("near_duplicate", 0)
    result["near_duplicate_examples"] = [pairs[i] for i in picks]
    print(f"near-duplicates removed: {result['near_duplicates']}; e.g.")
    for p in result["near_duplicate_examples"]:
        print(f"  {p['removed']}  ~  {p['kept']}  (Jaccard {p['similarity']})")
    return result, kept_texts


# ---- planted near-duplicates ------------------------------------------------------------------------------


def plant(texts: list[str], n: int, seed: int) -> dict[str, Any]:
    """Originals (indices into `texts`) and one edited copy for half of them, with true Jaccards."""
    rng = np.random.default_rng(seed)
    eligible = [i for i, t in enumerate(texts) if len(t.split()) >= 100]
    originals = sorted(rng.choice(eligible, size=min(n, len(eligible)), replace=False).tolist())
    vocabulary = sorted({word for t in texts for word in t.split()})
    hasher = MinHasher(CONFIG)
    copied = sorted(rng.choice(originals, size=len(originals) // 2, replace=False).tolist())
    copies, truth, fractions = [], [], []
    for i in copied:
        fraction = float(rng.uniform(0.01, 0.10))
        copy = edit_words(texts[i], fraction, rng, vocabulary)
        copies.append(copy)
        fractions.append(fraction)
        truth.append(jaccard(hasher.shingles(texts[i]), hasher.shingles(copy)))
    return {
        "originals": originals,
        "copied": copied,
        "copies": copies,
        "truth": np.array(truth),
        "fractions": fractions,
    }


# ---- 2. MinHash vs datasketch -----------------------------------------------------------------------------


def forge_candidates(texts: list[str]) -> tuple[float, np.ndarray, int]:
    """(seconds, candidate pairs (K, 2), shingles in all) of forge's MinHash LSH, one process."""
    start = time.perf_counter()
    hasher = MinHasher(CONFIG)
    shingle_sets = [hasher.shingles(t) for t in texts]
    bands = hasher.band_hashes(hasher.signatures(shingle_sets))  # (D, bands)
    valid = np.array([len(s) > 0 for s in shingle_sets])
    found = [bucket_pairs(bands[:, b], valid) for b in range(CONFIG.bands)]
    candidates = np.unique(np.concatenate(found), axis=0)
    return time.perf_counter() - start, candidates, sum(len(s) for s in shingle_sets)


_WORD = re.compile(rb"[A-Za-z0-9_\x80-\xff]+")  # forge's words, over UTF-8 bytes


def string_shingles(text: str, ngram: int) -> set[bytes]:
    """forge's word n-grams as strings: words joined by a space, UTF-8 (bytes.lower() is ASCII only)."""
    words = _WORD.findall(text.encode("utf-8").lower())
    n = min(ngram, len(words))
    return {b" ".join(words[i : i + n]) for i in range(len(words) - n + 1)} if words else set()


def datasketch_candidates(texts: list[str]) -> tuple[float, set[tuple[int, int]], int]:
    """(seconds, candidate pairs, shingles in all) of datasketch's MinHash + MinHashLSH, one process."""
    from datasketch import MinHash, MinHashLSH

    start = time.perf_counter()
    sets = [string_shingles(t, CONFIG.ngram) for t in texts]
    lsh = MinHashLSH(num_perm=CONFIG.num_perm, params=(CONFIG.bands, CONFIG.rows))
    indexed = []
    minhashes = MinHash.generator(sets, num_perm=CONFIG.num_perm, seed=CONFIG.seed)
    for i, (shingles, minhash) in enumerate(zip(sets, minhashes, strict=True)):
        if shingles:
            lsh.insert(i, minhash)
            indexed.append((i, minhash))
    pairs = {(min(i, j), max(i, j)) for i, minhash in indexed for j in lsh.query(minhash) if j != i}
    return time.perf_counter() - start, pairs, sum(len(s) for s in sets)


def compare_minhash(texts: list[str], planted: dict[str, Any], repeats: int) -> dict[str, Any]:
    docs = texts + planted["copies"]
    n = len(texts)
    positives = {
        (i, n + k) for k, i in enumerate(planted["copied"]) if planted["truth"][k] >= CONFIG.threshold
    }
    ours_times, theirs_times = [], []
    for _ in range(repeats):  # alternated, so that a busy spell of the machine hits both sides
        ours_s, ours, ours_shingles = forge_candidates(docs)
        theirs_s, theirs, theirs_shingles = datasketch_candidates(docs)
        ours_times.append(ours_s)
        theirs_times.append(theirs_s)
    ours_s, theirs_s = statistics.median(ours_times), statistics.median(theirs_times)
    ours_pairs = set(map(tuple, ours.tolist()))
    result = {
        "documents": len(docs),
        "planted_positive_pairs": len(positives),
        "forge_seconds": round(ours_s, 3),
        "datasketch_seconds": round(theirs_s, 3),
        "forge_docs_per_s": round(len(docs) / ours_s, 1),
        "datasketch_docs_per_s": round(len(docs) / theirs_s, 1),
        "speedup": round(theirs_s / ours_s, 2),
        "forge_seconds_all": [round(t, 3) for t in ours_times],
        "datasketch_seconds_all": [round(t, 3) for t in theirs_times],
        "forge_candidates": len(ours_pairs),
        "datasketch_candidates": len(theirs),
        "forge_shingles": ours_shingles,
        "datasketch_shingles": theirs_shingles,
        "forge_candidate_recall": round(len(positives & ours_pairs) / max(len(positives), 1), 4),
        "datasketch_candidate_recall": round(len(positives & theirs) / max(len(positives), 1), 4),
    }
    print(
        f"\n2. MinHash LSH, {len(docs):,} documents ({len(planted['copies'])} planted copies), one process "
        f"each, 5-grams, {CONFIG.num_perm} permutations, {CONFIG.bands} bands × {CONFIG.rows} rows"
    )
    for name in ("forge", "datasketch"):
        print(
            f"{name:<11} {result[f'{name}_seconds']:8.2f} s {result[f'{name}_docs_per_s']:>9,.1f} docs/s   "
            f"{result[f'{name}_shingles']:>10,} shingles {result[f'{name}_candidates']:>8,} candidate pairs "
            f"  recall of the {len(positives)} planted pairs ≥ {CONFIG.threshold}: "
            f"{result[f'{name}_candidate_recall']:.3f}"
        )
    print(f"forge is {result['speedup']:.1f}x faster than datasketch (datasketch seconds ÷ forge seconds)")
    return result


# ---- 3. precision and recall ------------------------------------------------------------------------------


def planted_decisions(tmp: Path, texts: list[str], domains: list[str], planted: dict[str, Any]) -> dict:
    originals, copies, truth = planted["originals"], planted["copies"], planted["truth"]
    records = [{"id": f"original-{i}", "text": texts[i], "domain": domains[i]} for i in originals]
    records += [
        {"id": f"copy-{k}", "text": c, "domain": domains[planted["copied"][k]]} for k, c in enumerate(copies)
    ]
    path = tmp / "planted.jsonl"
    write_jsonl(path, records)
    no_filters = SafetyConfig(min_blocked_terms=10**9, scrub_pii=False)
    prepare(
        PrepareConfig(
            inputs=(str(path),),
            out=str(tmp / "planted"),
            quality=QualityConfig(enabled=False),
            safety=no_filters,
            dedup=False,
            workers=1,
            progress=False,
        )
    )
    report, kept_ids, _ = read_output(tmp / "planted")
    removed = {r["id"] for r in records} - set(kept_ids)
    copy_removed = np.array([f"copy-{k}" in removed for k in range(len(copies))], dtype=bool)
    positive = truth >= CONFIG.threshold
    true_positives = int((copy_removed & positive).sum())
    near = report["removed_by_reason"].get("near_duplicate", 0)
    result = {
        "originals": len(originals),
        "copies": len(copies),
        "copies_at_or_above_threshold": int(positive.sum()),
        "removed": len(removed),
        "removed_as_near_duplicate": near,
        "removed_for_other_reasons": {
            r: n for r, n in report["removed_by_reason"].items() if r != "near_duplicate"
        },
        "true_positives": true_positives,
        "positives_missed": int((~copy_removed & positive).sum()),
        "copies_below_threshold_removed": int((copy_removed & ~positive).sum()),
        "copies_below_threshold_kept": int((~copy_removed & ~positive).sum()),
        "originals_removed": sum(f"original-{i}" in removed for i in originals),
        "recall": round(true_positives / max(int(positive.sum()), 1), 4),
        "precision": round(true_positives / max(len(removed), 1), 4) if removed else None,
        "copies_by_true_jaccard": {},
    }
    for lo, hi in ((0, 0.5), (0.5, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.01)):
        inside = (truth >= lo) & (truth < hi)
        result["copies_by_true_jaccard"][f"{lo}-{min(hi, 1)}"] = {
            "copies": int(inside.sum()),
            "removed": int((inside & copy_removed).sum()),
        }
    print(
        f"\n3. planted near-duplicates: {len(originals)} originals, {len(copies)} copies "
        f"({result['copies_at_or_above_threshold']} of true Jaccard ≥ {CONFIG.threshold})"
    )
    print(
        f"removed {len(removed)} ({near} as near-duplicates): {true_positives} true positives, "
        f"{result['positives_missed']} positives missed, {result['copies_below_threshold_removed']} copies "
        f"below the threshold removed, {result['originals_removed']} originals removed"
    )
    print(f"recall {result['recall']:.3f}, precision {result['precision']}")
    for band, row in result["copies_by_true_jaccard"].items():
        print(f"  true Jaccard {band:<9} {row['copies']:>4} copies, {row['removed']:>4} removed")
    return result


# ---- 4. datatrove ------------------------------------------------------------------------------------------

# forge's rule groups beside the datatrove filter that implements the same published rules
RULE_GROUPS: dict[str, Callable[[str, QualityConfig], object] | None] = {
    "GopherRepetitionFilter": lambda t, c: quality._gopher_repetition(t, t.split(), c),
    "GopherQualityFilter": lambda t, c: quality._gopher_quality(t, t.split(), c),
    "C4QualityFilter": lambda t, c: quality._c4_document(t, c),
    "FineWebQualityFilter": None,  # no forge counterpart
}


def _timed_pass(texts: list[str], keeps: Callable[[str], bool]) -> dict[str, Any]:
    start = time.perf_counter()
    kept = sum(map(keeps, texts))
    seconds = time.perf_counter() - start
    return {
        "docs_in": len(texts),
        "docs_out": kept,
        "seconds": round(seconds, 3),
        "docs_per_s": _rate(len(texts), seconds),
    }


def run_datatrove(tmp: Path, texts: list[str], minhash_texts: list[str]) -> dict[str, Any]:
    """Each datatrove filter, and forge's rule group of the same name, over every text; datatrove's
    MinHash signature stage over `minhash_texts`. One process, each timed alone."""
    from datatrove.data import Document
    from datatrove.pipeline import filters
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from loguru import logger

    logger.disable("datatrove")
    config = QualityConfig()
    rows: dict[str, Any] = {}
    for name, ours in RULE_GROUPS.items():
        step = getattr(filters, name)()
        start = time.perf_counter()
        kept = sum(1 for _ in step.run(Document(text=t, id=str(i)) for i, t in enumerate(texts)))
        seconds = time.perf_counter() - start
        theirs = {
            "docs_in": len(texts),
            "docs_out": kept,
            "seconds": round(seconds, 3),
            "docs_per_s": _rate(len(texts), seconds),
        }
        forge = _timed_pass(texts, lambda t, rule=ours: rule(t, config) is None) if ours else None
        rows[name] = {"datatrove": theirs, "forge": forge}
    minhash = MinhashConfig(
        n_grams=CONFIG.ngram, num_buckets=CONFIG.bands, hashes_per_bucket=CONFIG.rows, seed=CONFIG.seed
    )
    signature = MinhashDedupSignature(output_folder=str(tmp / "datatrove-signatures"), config=minhash)
    start = time.perf_counter()
    signature.run(Document(text=t, id=str(i)) for i, t in enumerate(minhash_texts))
    seconds = time.perf_counter() - start
    rows["MinhashDedupSignature"] = {
        "datatrove": {
            "docs_in": len(minhash_texts),
            "seconds": round(seconds, 3),
            "docs_per_s": _rate(len(minhash_texts), seconds),
        }
    }
    return {"version": importlib.metadata.version("datatrove"), "steps": rows}


def _cells(row: dict[str, Any] | None) -> str:
    """ "documents in → kept, docs/s" of one side, 26 characters."""
    if row is None:
        return f"{'-':>26}"
    out = f"{row['docs_out']:>6,}" if "docs_out" in row else f"{'':>6}"
    return f"{row['docs_in']:>6,} → {out} {_fmt(row['docs_per_s'], 10)}"


def compare_datatrove(
    tmp: Path, decoded: list[RawDocument], pipeline: dict, minhash: dict, minhash_texts: list[str]
) -> dict[str, Any]:
    texts = [normalize(str(d.data)) for d in decoded]  # what forge's quality step is given
    try:
        result = run_datatrove(tmp, texts, minhash_texts)
    except Exception as e:  # not installed, or a filter needs something it cannot fetch offline
        reason = f"{type(e).__name__}: {e}"
        print(f"\n4. datatrove skipped: {reason}")
        return {"skipped": reason}
    steps = result["steps"]
    steps["MinhashDedupSignature"]["forge"] = {
        "docs_in": minhash["documents"],
        "docs_per_s": minhash["forge_docs_per_s"],
        "seconds": minhash["forge_seconds"],
    }
    print(
        f"\n4. vs datatrove {result['version']}: the same rules over every document, one process, docs/s "
        f"(forge's rule group of the same published rules; forge MinHash: step 2, with LSH candidates)"
    )
    print(f"{'':<22} {'forge: in → kept, docs/s':>26}   {'datatrove: in → kept, docs/s':>26}")
    for name, row in steps.items():
        print(f"{name:<22} {_cells(row['forge'])}   {_cells(row['datatrove'])}")
    print("forge's per-document steps in step 1, per core (code rules on code, prose rules on prose):")
    for s in pipeline["steps"]:
        if s["name"] in STEPS and s["seconds"] > 0:
            print(f"  {s['name']:<20} {_cells({**s, 'docs_per_s': s['docs_per_s_per_core']})}")
    paired = [row for row in steps.values() if row["forge"] and "docs_out" in row["forge"]]
    ours = sum(row["forge"]["seconds"] for row in paired)
    theirs = sum(row["datatrove"]["seconds"] for row in paired)
    result["quality_rules_speedup"] = round(theirs / ours, 2)
    sig = steps["MinhashDedupSignature"]
    result["minhash_speedup"] = round(sig["datatrove"]["seconds"] / sig["forge"]["seconds"], 2)
    print(
        f"forge's Gopher + C4 rules {result['quality_rules_speedup']:.1f}x datatrove's three filters "
        f"({theirs:.1f} s ÷ {ours:.1f} s); forge's MinHash + LSH {result['minhash_speedup']:.1f}x "
        "datatrove's signature stage"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=0, help="pipeline processes (0 = the cores available)")
    parser.add_argument("--planted", type=int, default=1000, help="planted originals (half get a copy)")
    parser.add_argument(
        "--limit", type=int, default=0, help="use only the first N stdlib documents (0 = all)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of step 2 per side (median)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the planted set")
    parser.add_argument("--skip-datatrove", action="store_true", help="do not run datatrove")
    args = parser.parse_args()
    workers = args.workers or available_cores()
    info = machine()
    print(
        f"{info['cpu']}, {info['cores']} cores available ({info['threads']} threads), Python "
        f"{info['python']}, load average {info['load_average'][0]:.2f}"
    )
    raw = list(iter_stdlib(on_problem=lambda reason, where, detail: None))
    raw = raw[: args.limit] if args.limit else raw
    decoded = decoded_texts(raw)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        pipeline, texts = run_pipeline(tmp, decoded if args.limit else raw, args.limit, workers)
        domains = pq_domains(tmp / "stdlib")
        planted = plant(texts, args.planted, args.seed)
        minhash = compare_minhash(texts, planted, args.repeats)
        decisions = planted_decisions(tmp, texts, domains, planted)
        datatrove: dict[str, Any] = {"skipped": "--skip-datatrove"}
        if not args.skip_datatrove:
            datatrove = compare_datatrove(tmp, decoded, pipeline, minhash, texts + planted["copies"])
    summary = {
        "near_dup_recall": decisions["recall"],
        "near_dup_precision": decisions["precision"],
        "minhash_speedup_vs_datasketch": minhash["speedup"],
        "pipeline_docs_per_s": pipeline["docs_per_s"],
        "pipeline_mb_per_s": pipeline["mb_per_s"],
        "pipeline_docs_per_s_per_core": pipeline["docs_per_s_per_core"],
        "minhash_candidate_recall_forge": minhash["forge_candidate_recall"],
        "minhash_candidate_recall_datasketch": minhash["datasketch_candidate_recall"],
    }
    if "skipped" not in datatrove:
        summary["quality_rules_speedup_vs_datatrove"] = datatrove["quality_rules_speedup"]
        summary["minhash_speedup_vs_datatrove_signature"] = datatrove["minhash_speedup"]
    info["load_average_after"] = os.getloadavg()
    result = {
        "summary": summary,
        "pipeline": pipeline,
        "minhash_vs_datasketch": minhash,
        "planted": decisions | {"seed": args.seed, "edit_fraction": [0.01, 0.10]},
        "datatrove": datatrove,
        "near_dedup_config": {
            "ngram": CONFIG.ngram,
            "num_perm": CONFIG.num_perm,
            "bands": CONFIG.bands,
            "rows": CONFIG.rows,
            "threshold": CONFIG.threshold,
            "seed": CONFIG.seed,
        },
        "limit": args.limit,
        "machine": info,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def pq_domains(out: Path) -> list[str]:
    """The `domain` column of a `prepare` output, in the order of `read_output`'s texts."""
    return [
        d
        for path in sorted(out.glob("docs-*.parquet"))
        for d in pq.read_table(path, columns=["domain"]).column(0).to_pylist()
    ]


if __name__ == "__main__":
    main()
