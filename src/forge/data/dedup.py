"""Deduplication: exact (content digests) and near-duplicate (MinHash with LSH banding, verified).

Exact: documents are compared by the BLAKE2b-128 digest of their normalised UTF-8 text (16 bytes a
document, collisions negligible), so files that differ only in line endings, trailing spaces or Unicode
composition count as one. The first document in input order wins.

Near-duplicates, in the FineWeb / datatrove manner but vectorised with numpy:
1. shingles: the text is split into words (runs of letters, digits, "_" and non-ASCII characters,
   ASCII compared case-insensitively), each word hashed to 64 bits over its bytes in one vectorised pass
   (`word_hashes`); every run of `ngram` consecutive words (default 5) is one shingle, its word hashes
   combined polynomially, and a document is the set of its shingle hashes (a text shorter than `ngram`
   words is one shingle);
2. MinHash: `num_perm` hash functions h_k(x) = (a_k·x + b_k mod 2⁶⁴) >> 32 (multiply-shift, a_k odd, from
   `seed`); the signature is each function's minimum over the set. P(sig_k(A) = sig_k(B)) = Jaccard(A, B);
3. LSH banding: the signature is cut into `bands` bands of `rows` values, each band hashed to 64 bits;
   two documents that share any band hash are candidates. A pair of similarity s becomes a candidate with
   probability 1 − (1 − s^rows)^bands:

   | bands × rows | s = 0.5 | s = 0.7 | s = 0.8 | s = 0.9 |
   |--------------|---------|---------|---------|---------|
   | 14 × 8 (FineWeb)  | 0.05 | 0.56 | 0.92 | 1.00 |
   | 28 × 4 (default)  | 0.84 | 1.00 | 1.00 | 1.00 |

   FineWeb's banding alone misses 8% of the pairs at exactly 0.8 (and 23% of those at 0.75), so the
   default cuts the same 112 permutations into 28 bands of 4, for recall, and lets verification give
   precision;
4. verification: each candidate pair's exact Jaccard similarity of shingle sets (recomputed from the two
   texts) must reach `threshold` (default 0.8); `verify="estimate"` uses the signatures' agreement instead,
   which needs no text but is noisy near the threshold (±0.04 at 0.8 with 112 permutations);
5. clusters: verified pairs are joined into connected components (union-find); each component keeps its
   first document in input order and drops the rest, so the result is deterministic.

Candidates come from bucket-mates in each band: every member is paired with the bucket's first member
and with its neighbour in sorted order, which is linear in the bucket size (all pairs would be
quadratic for boilerplate shared by thousands of files).

Vectorised numpy was chosen over `datasketch` because it is faster on the same work: `bench/data.py`
measures both with the same parameters.
"""

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from forge.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class NearDedupConfig:
    """Options of near-duplicate removal (flags `--minhash.NAME`)."""

    enabled: bool = True
    """remove near-duplicate documents (MinHash LSH, verified)"""
    ngram: int = 5
    """words per shingle"""
    num_perm: int = 112
    """MinHash permutations; must equal bands × rows"""
    bands: int = 28
    """LSH bands (more bands of fewer rows: more recall, more candidates to verify)"""
    rows: int = 4
    """signature values per band"""
    threshold: float = 0.8
    """Jaccard similarity of shingle sets at or above which two documents are near-duplicates"""
    verify: str = "exact"
    """how candidate pairs are confirmed: exact (Jaccard of the shingle sets) or estimate (signatures)"""
    seed: int = 1
    """seed of the MinHash functions"""

    def __post_init__(self) -> None:
        for name in ("ngram", "num_perm", "bands", "rows"):
            if (value := getattr(self, name)) < 1:
                raise ConfigError(f"--minhash.{name.replace('_', '-')} must be at least 1, got {value}")
        if self.bands * self.rows != self.num_perm:
            raise ConfigError(
                f"--minhash.bands × --minhash.rows must equal --minhash.num-perm: "
                f"{self.bands} × {self.rows} ≠ {self.num_perm}"
            )
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"--minhash.threshold must be in (0, 1], got {self.threshold}")
        if self.verify not in ("exact", "estimate"):
            raise ConfigError(f"--minhash.verify must be exact or estimate, got {self.verify!r}")


def text_digest(text: str) -> bytes:
    """The 16-byte digest exact deduplication compares."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class ExactDedup:
    """Remembers the digest of every kept text and which document it came from (one process)."""

    def __init__(self) -> None:
        self._first: dict[bytes, str] = {}

    def duplicate_of(self, text: str, doc_id: str) -> str | None:
        """The id of an earlier document with the same text, or None (and `doc_id` is remembered)."""
        digest = text_digest(text)
        if digest in self._first:
            return self._first[digest]
        self._first[digest] = doc_id
        return None

    def __len__(self) -> int:
        return len(self._first)


class MinHasher:
    """Shingle sets, MinHash signatures and LSH band hashes of texts (see the module docstring)."""

    def __init__(self, config: NearDedupConfig) -> None:
        self.config = config
        rng = np.random.default_rng(config.seed)
        self._a = rng.integers(1, 2**63, size=config.num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self._b = rng.integers(0, 2**63, size=config.num_perm, dtype=np.uint64)
        self._mix = np.uint64(0x9E3779B97F4A7C15)  # odd constant that combines word / row hashes

    def shingles(self, text: str) -> np.ndarray:
        """The sorted, unique 64-bit shingle hashes of `text` (empty for a text without words)."""
        hashes = word_hashes(text)
        if not len(hashes):
            return hashes
        n = min(self.config.ngram, len(hashes))
        count = len(hashes) - n + 1
        with np.errstate(over="ignore"):
            shingle = hashes[:count].copy()
            for j in range(1, n):
                shingle = shingle * self._mix + hashes[j : j + count]
        return np.unique(shingle)

    def signatures(self, shingle_sets: Sequence[np.ndarray]) -> np.ndarray:
        """MinHash signatures (D, num_perm) uint32 of D shingle sets; an empty set gets all 2³²−1."""
        D, P = len(shingle_sets), self.config.num_perm
        out = np.full((D, P), 0xFFFFFFFF, dtype=np.uint32)
        sizes = np.fromiter((len(s) for s in shingle_sets), dtype=np.int64, count=D)
        nonempty = np.flatnonzero(sizes)
        chunk_elements, start = 1 << 15, 0
        while start < len(nonempty):  # chunks of documents bound the (P, shingles) temporary
            stop, total = start, 0
            while stop < len(nonempty) and (stop == start or total + sizes[nonempty[stop]] <= chunk_elements):
                total += int(sizes[nonempty[stop]])
                stop += 1
            docs = nonempty[start:stop]
            flat = np.concatenate([shingle_sets[d] for d in docs])  # (S,)
            with np.errstate(over="ignore"):
                hashed = (flat[None, :] * self._a[:, None] + self._b[:, None]) >> np.uint64(32)  # (P, S)
            offsets = np.concatenate(([0], np.cumsum(sizes[docs])[:-1]))
            out[docs] = np.minimum.reduceat(hashed, offsets, axis=1).T.astype(np.uint32)  # (docs, P)
            start = stop
        return out

    def band_hashes(self, signatures: np.ndarray) -> np.ndarray:
        """(D, bands) uint64: one hash per band of `rows` signature values."""
        D = signatures.shape[0]
        rows = signatures.reshape(D, self.config.bands, self.config.rows).astype(np.uint64)
        with np.errstate(over="ignore"):
            acc = np.full((D, self.config.bands), 0xCBF29CE484222325, dtype=np.uint64)
            for r in range(self.config.rows):
                acc = (acc ^ rows[:, :, r]) * self._mix
        return acc


# bytes that belong to words: ASCII letters, digits, "_", and every byte of a non-ASCII character
_IS_WORD_BYTE = np.zeros(256, dtype=bool)
for _c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_":
    _IS_WORD_BYTE[_c] = True
_IS_WORD_BYTE[128:] = True
_LOWER = np.arange(256, dtype=np.uint64)
_LOWER[65:91] += 32
_POWERS = np.ones(64, dtype=np.uint64)
with np.errstate(over="ignore"):
    for _k in range(1, 64):
        _POWERS[_k] = _POWERS[_k - 1] * np.uint64(0x100000001B3)  # FNV prime


def word_hashes(text: str) -> np.ndarray:
    """A 64-bit hash of every word of `text`, in order, computed over its UTF-8 bytes without a Python loop.

    A word is a maximal run of ASCII letters, digits, "_" and non-ASCII characters (so "naïve" and "日本"
    are words and punctuation separates them), compared case-insensitively for ASCII; bytes past the
    64th of a word wrap around the power table, which only matters for absurdly long tokens.
    """
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    is_word = _IS_WORD_BYTE[data]
    if not is_word.any():
        return np.zeros(0, dtype=np.uint64)
    starts = is_word & ~np.concatenate(([False], is_word[:-1]))  # first byte of each word
    word_bytes = _LOWER[data[is_word]] + np.uint64(1)  # (W_bytes,) letters of all words, back to back
    first = np.flatnonzero(starts[is_word])  # (W,) where each word begins in word_bytes
    position = np.arange(len(word_bytes)) - np.repeat(first, np.diff(np.append(first, len(word_bytes))))
    with np.errstate(over="ignore"):
        hashes = np.add.reduceat(word_bytes * _POWERS[position % 64], first)  # (W,)
        hashes ^= hashes >> np.uint64(29)  # spread the high bits into the low ones
        hashes *= np.uint64(0xBF58476D1CE4E5B9)
        hashes ^= hashes >> np.uint64(32)
    return hashes


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted unique arrays (1.0 for two empty sets)."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    common = len(np.intersect1d(a, b, assume_unique=True))
    return common / (len(a) + len(b) - common)


def bucket_pairs(hashes: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Candidate pairs (K, 2) int64, i < j, among indices that share a hash in one band: each is paired
    with its bucket's first index and with its neighbour in sorted order."""
    index = np.arange(len(hashes)) if valid is None else np.flatnonzero(valid)
    order = index[np.argsort(hashes[index], kind="stable")]  # equal hashes keep index order
    sorted_hashes = hashes[order]
    same = sorted_hashes[1:] == sorted_hashes[:-1]  # (n-1,): position k+1 continues k's bucket
    if not same.any():
        return np.zeros((0, 2), dtype=np.int64)
    positions = np.arange(len(order))
    starts = np.where(np.concatenate(([True], ~same)), positions, 0)
    first = order[np.maximum.accumulate(starts)]  # the bucket's first index, for every position
    follower = np.flatnonzero(same) + 1
    pairs = np.concatenate(
        [
            np.stack([first[follower], order[follower]], axis=1),
            np.stack([order[follower - 1], order[follower]], axis=1),
        ]
    )
    pairs = np.sort(pairs, axis=1)
    return np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0)


class UnionFind:
    """Disjoint sets over 0..n-1 whose representative is always the smallest member."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:  # path compression
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def clusters_to_drop(n: int, pairs: Iterable[tuple[int, int]]) -> dict[int, int]:
    """{dropped index: kept index} for the connected components of `pairs` over 0..n-1: each component
    keeps its smallest index."""
    union = UnionFind(n)
    members: set[int] = set()
    for i, j in pairs:
        union.union(i, j)
        members.update((i, j))
    return {i: root for i in sorted(members) if (root := union.find(i)) != i}


def edit_words(text: str, fraction: float, rng: np.random.Generator, vocabulary: Sequence[str]) -> str:
    """`text` with about `fraction` of its words edited (each edit a substitution, an insertion or a
    deletion, chosen at random): the planted near-duplicates of the tests and `bench/data.py`."""
    words = text.split()
    for _ in range(max(1, round(fraction * len(words)))):
        where = int(rng.integers(len(words)))
        kind = int(rng.integers(3))
        if kind == 0:
            words[where] = vocabulary[int(rng.integers(len(vocabulary)))]
        elif kind == 1:
            words.insert(where, vocabulary[int(rng.integers(len(vocabulary)))])
        elif len(words) > 1:
            del words[where]
    return " ".join(words)


# ---------------------------------------------------------------------------------------------------------
# boilerplate lines: a line repeated across many documents (a licence header, a generated banner) is kept
# in the first document that has it and removed from the others. In code only comment lines count, so
# that `if __name__ == "__main__":` survives everywhere.

_COMMENT_STARTS = ("#", "//", "/*", "*", "--", ";", '"""', "'''")


def _line_key(line: str) -> int:
    return int.from_bytes(hashlib.blake2b(line.strip().encode("utf-8"), digest_size=8).digest(), "little")


def _is_candidate(line: str, code: bool, min_chars: int) -> bool:
    stripped = line.strip()
    return len(stripped) >= min_chars and (not code or stripped.startswith(_COMMENT_STARTS))


def line_hashes(text: str, *, code: bool, min_chars: int) -> np.ndarray:
    """The unique 64-bit hashes of the lines of `text` that may be boilerplate (sorted, uint64)."""
    keys = {_line_key(line) for line in text.split("\n") if _is_candidate(line, code, min_chars)}
    return np.array(sorted(keys), dtype=np.uint64)


def boilerplate(hashes: np.ndarray, documents: np.ndarray, min_docs: int) -> dict[int, int]:
    """{line hash: first document index} for the lines found in at least `min_docs` documents, given the
    flat (hash, document) pairs of every document's unique line hashes."""
    if not len(hashes):
        return {}
    order = np.lexsort((documents, hashes))  # by hash, then document
    hashes, documents = hashes[order], documents[order]
    starts = np.flatnonzero(np.concatenate(([True], hashes[1:] != hashes[:-1])))
    counts = np.diff(np.append(starts, len(hashes)))
    common = starts[counts >= min_docs]
    return dict(zip(hashes[common].tolist(), documents[common].tolist(), strict=True))


def strip_lines(
    text: str, common: dict[int, int], document: int, *, code: bool, min_chars: int
) -> tuple[str, int]:
    """`text` (of document index `document`) without the lines that `common` ({line hash: document that
    keeps it}) gives to another document; returns it with the number of lines removed."""
    kept, removed = [], 0
    for line in text.split("\n"):
        if _is_candidate(line, code, min_chars) and common.get(_line_key(line), document) != document:
            removed += 1
        else:
            kept.append(line)
    return ("\n".join(kept).strip("\n") if removed else text), removed
