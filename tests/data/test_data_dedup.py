"""Deduplication: MinHash signatures, LSH candidates, clusters, and precision/recall on planted
near-duplicates through the whole `prepare` pipeline."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from forge.data.dedup import (
    MinHasher,
    NearDedupConfig,
    bucket_pairs,
    clusters_to_drop,
    edit_words,
    jaccard,
    word_hashes,
)
from forge.data.prepare import PrepareConfig, prepare
from forge.data.quality import QualityConfig
from forge.errors import ConfigError


def _vocabulary(rng: np.random.Generator, size: int = 20_000) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return ["".join(rng.choice(letters, size=int(rng.integers(2, 10)))) for _ in range(size)]


def _document(rng: np.random.Generator, vocabulary: list[str], words: int) -> str:
    ranks = np.minimum(rng.zipf(1.2, size=words), len(vocabulary)) - 1  # a few words are very common
    return " ".join(vocabulary[r] for r in ranks)


def test_words_are_hashed_case_insensitively_and_split_on_punctuation() -> None:
    a, b = word_hashes("Hello, World! naïve_x 日本"), word_hashes("hello world naïve_x 日本")
    assert len(a) == 4 and np.array_equal(a, b)
    assert len(set(word_hashes("one two three four").tolist())) == 4
    assert len(word_hashes("  ...  ")) == 0


def test_signature_agreement_estimates_jaccard() -> None:
    rng = np.random.default_rng(0)
    vocabulary = _vocabulary(rng)
    hasher = MinHasher(NearDedupConfig(num_perm=256, bands=64, rows=4))
    for fraction in (0.02, 0.05, 0.1):
        base = _document(rng, vocabulary, 400)
        a, b = hasher.shingles(base), hasher.shingles(edit_words(base, fraction, rng, vocabulary))
        signatures = hasher.signatures([a, b])
        estimate = (signatures[0] == signatures[1]).mean()
        assert abs(estimate - jaccard(a, b)) < 0.1  # 4 standard deviations at 256 permutations
    assert (hasher.signatures([np.zeros(0, np.uint64)]) == 0xFFFFFFFF).all()


def test_bucket_pairs_and_clusters_keep_the_first_document() -> None:
    hashes = np.array([5, 3, 5, 7, 3, 5], dtype=np.uint64)
    assert bucket_pairs(hashes).tolist() == [[0, 2], [0, 5], [1, 4], [2, 5]]
    valid = np.array([True, True, False, True, True, True])
    assert bucket_pairs(hashes, valid).tolist() == [[0, 5], [1, 4]]
    assert clusters_to_drop(6, [(0, 2), (2, 5), (1, 4)]) == {2: 0, 4: 1, 5: 0}
    assert clusters_to_drop(3, [(1, 2)]) == {2: 1}


def test_bad_minhash_settings_name_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"bands.*rows.*num-perm.*14 × 4"):
        NearDedupConfig(bands=14, rows=4)
    with pytest.raises(ConfigError, match="threshold"):
        NearDedupConfig(threshold=1.5)


def test_planted_near_duplicates_are_found_with_high_precision_and_recall(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vocabulary = _vocabulary(rng)
    originals = [_document(rng, vocabulary, int(rng.integers(150, 400))) for _ in range(300)]
    hasher = MinHasher(NearDedupConfig())
    records, truth = [], {}  # truth: copy id → exact Jaccard with its original
    for i, text in enumerate(originals):
        records.append({"id": f"orig-{i}", "text": text})
    for i in range(0, 300, 2):  # every other original gets one copy with 1-10% of its words edited
        fraction = float(rng.uniform(0.01, 0.10))
        copy = edit_words(originals[i], fraction, rng, vocabulary)
        records.append({"id": f"copy-{i}", "text": copy})
        truth[f"copy-{i}"] = jaccard(hasher.shingles(originals[i]), hasher.shingles(copy))
    records.append({"id": "exact-0", "text": originals[3]})
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "docs"
    prepare(
        PrepareConfig(inputs=(str(corpus),), out=str(out), quality=QualityConfig(enabled=False), workers=1,
                      progress=False)
    )  # fmt: skip
    kept = {r for f in out.glob("docs-*.parquet") for r in pq.read_table(f).column("id").to_pylist()}
    removed = {r["id"] for r in records} - kept
    report = json.loads((out / "report.json").read_text())
    assert report["removed_by_reason"]["exact_duplicate"] == 1 and "exact-0" in removed
    near_removed = removed - {"exact-0"}
    positives = {copy for copy, similarity in truth.items() if similarity >= 0.8}
    assert len(positives) >= 20  # the edits give a spread of similarities around the threshold
    recall = len(near_removed & positives) / len(positives)
    precision = len(near_removed & positives) / max(len(near_removed), 1)
    assert recall >= 0.95 and precision >= 0.99, (recall, precision)
    assert all(f"orig-{i}" in kept for i in range(300))  # the first of each pair is the one kept
    pairs = report["extra"]["near_duplicate_pairs"]
    assert pairs and all(p["similarity"] >= 0.8 and p["removed"].startswith("copy-") for p in pairs)


def test_boilerplate_lines_stay_in_the_first_document_only(tmp_path: Path) -> None:
    header = (
        "# Copyright (c) 2024 Example Corp. All rights reserved.\n# Licensed under the Apache License 2.0.\n"
    )
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        body = f"def function_{i}(value):\n    return value * {i + 2} + {i}\n\n\nif __name__ == '__main__':\n"
        (src / f"m{i}.py").write_text(header + body + f"    print(function_{i}({i}))\n")
    out = tmp_path / "docs"
    prepare(
        PrepareConfig(inputs=(str(src),), out=str(out), quality=QualityConfig(enabled=False),
                      minhash=NearDedupConfig(enabled=False), boilerplate_min_docs=3, progress=False)
    )  # fmt: skip
    texts = {r["id"]: r["text"] for f in out.glob("docs-*.parquet") for r in pq.read_table(f).to_pylist()}
    assert texts["src/m0.py"].startswith("# Copyright")  # the first keeps its header
    for i in (1, 2, 3):
        assert texts[f"src/m{i}.py"].startswith(f"def function_{i}")
        assert "if __name__ == '__main__':" in texts[f"src/m{i}.py"]  # code lines are never boilerplate
    report = json.loads((out / "report.json").read_text())
    assert report["counters"]["lines_removed"]["boilerplate"] == 6
    with pytest.raises(ConfigError, match="boilerplate-min-docs 1"):
        PrepareConfig(boilerplate_min_docs=1)
