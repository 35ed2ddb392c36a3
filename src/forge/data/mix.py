"""Domain weights: `forge data tokenize --mix code=0.7,docs=0.3` resamples the training split so that each
domain holds a target share of its tokens.

The rule: with n_d the natural training tokens of domain d (EOS separators included) and s_d its target
share, domain d is written f_d = s_d · T / n_d times over. T, the size of the mixed split, is the natural
total of the domains kept (s_d > 0): the split keeps its size (a domain dropped with weight 0 is not
replaced by repeats of the others), domains above their target are downsampled (f_d < 1) and those
below it repeated (f_d > 1), none more than its target needs.

A fractional factor f = k + r is realised per document and deterministically: every document of the
domain is written k times, and once more the documents that come first in the order of a seeded hash of
their id, until their tokens are nearest to r · n_d. So 2.4 writes the domain twice plus about 40% of
its tokens a third time, and 0.3 keeps about 30% of them; each domain is off its target by at most half
a document. Copies are spread, not adjacent: copy c of a document written m times lands at a point,
drawn from a hash of (seed, id, c), of the c-th of m equal stretches of the split, so its copies are
about 1/m of the split apart and a training window does not see a document twice in a row.

Only the training split is mixed: validation keeps the natural distribution, so its loss stays
comparable between runs with different mixes, or none.

Memory: a first pass writes each training document's ids to a scratch file of its domain and keeps a few
integers per document; a second pass reads them back (memory-mapped) in the mixed order.

Practice: the Pile gives each component a number of epochs (Gao et al. 2020, Table 1: Wikipedia 3,
Pile-CC 1), and LLaMA a sampling proportion and epochs per source (Touvron et al. 2023, Table 1).
"""

import array
import hashlib
import math
import shutil
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from forge.errors import ConfigError, DataError
from forge.tokenizer.bpe import doc_files

__all__ = [
    "TrainSpool",
    "check_domains",
    "copies_per_document",
    "mix_domains",
    "mix_factors",
    "mixed_order",
    "parse_mix",
    "read_domains",
]

EXAMPLE = "'code=0.7,docs=0.3'"
SUM_TOLERANCE = 0.01


def _names(names: Collection[str]) -> str:
    return ", ".join(repr(name) for name in names)


def parse_mix(text: str) -> dict[str, float]:
    """`--mix` text → {domain: target share}, in the order given, normalised to sum 1; {} for ''."""
    if not text.strip():
        return {}
    weights: dict[str, float] = {}
    for item in text.split(","):
        domain, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not domain:
            raise ConfigError(f"--mix: {item.strip()!r} is not DOMAIN=WEIGHT; write the mix like {EXAMPLE}")
        if domain in weights:
            raise ConfigError(f"--mix gives {domain!r} two weights; give each domain one")
        try:
            weight = float(value)
        except ValueError:
            raise ConfigError(
                f"--mix: the weight of {domain!r} is {value!r}, not a number; write the mix like {EXAMPLE}"
            ) from None
        if not math.isfinite(weight) or weight < 0:
            raise ConfigError(
                f"--mix: the weight of {domain!r} must be a positive number, or 0 to leave the domain out "
                f"of training; got {value}"
            )
        weights[domain] = weight
    total = sum(weights.values())
    if abs(total - 1) > SUM_TOLERANCE:
        raise ConfigError(f"--mix weights sum to {total:g}, not 1; make them add up to 1, like {EXAMPLE}")
    return {domain: weight / total for domain, weight in weights.items()}


def read_domains(docs_dir: str | Path) -> tuple[list[str], np.ndarray]:
    """(domain names, index into them per document) of every document of `docs_dir`, in order."""
    names: dict[str, int] = {}
    parts = []
    for path in doc_files(docs_dir):
        if "domain" not in pq.ParquetFile(path).schema_arrow.names:
            raise DataError(
                f"{path} has no 'domain' column, which --mix needs; rerun `forge data prepare` "
                "or leave out --mix"
            )
        column = pq.read_table(path, columns=["domain"]).column("domain").combine_chunks()
        if column.null_count:
            raise DataError(f"{path} has documents without a domain; rerun `forge data prepare`")
        encoded = column.dictionary_encode()  # a few distinct names: map each once, not each row
        codes = [names.setdefault(name, len(names)) for name in encoded.dictionary.to_pylist()]
        parts.append(np.array(codes, dtype=np.int64)[encoded.indices.to_numpy()])
    return list(names), np.concatenate(parts)


def check_domains(mix: dict[str, float], domains: Collection[str], train_domains: Collection[str]) -> None:
    """Raise unless `mix` weighs exactly the corpus's `domains`, and every weighted domain has training
    documents (`train_domains`: the domains of the documents not held out for validation)."""
    corpus = sorted(set(domains))
    unknown = [domain for domain in mix if domain not in corpus]
    if unknown:
        raise ConfigError(
            f"--mix names {_names(unknown)}, not a domain of the corpus, whose domains are {_names(corpus)}"
        )
    missing = [domain for domain in corpus if domain not in mix]
    if missing:
        raise ConfigError(
            f"--mix gives no weight to the corpus's domain(s) {_names(missing)}; give each one, "
            f"e.g. '{missing[0]}=0.1', or 0 to leave it out of training ('{missing[0]}=0')"
        )
    empty = [domain for domain, share in mix.items() if share > 0 and domain not in set(train_domains)]
    if empty:
        raise DataError(
            f"--mix: domain(s) {_names(empty)} have no document in the training split (all are held out "
            "for validation); give them weight 0 or lower --val-fraction"
        )


def mix_domains(docs_dir: str | Path, mix: dict[str, float], is_val: np.ndarray) -> np.ndarray:
    """The position in `mix` of every document's domain, once `check_domains` passes (`is_val`: the
    documents held out for validation)."""
    names, codes = read_domains(docs_dir)
    check_domains(mix, names, {names[c] for c in np.unique(codes[~is_val])})
    return np.array([list(mix).index(name) for name in names], dtype=np.int64)[codes]


def mix_factors(mix: dict[str, float], natural_tokens: dict[str, int]) -> dict[str, float]:
    """f_d = s_d · T / n_d per domain, T the natural tokens of the domains with s_d > 0."""
    total = sum(tokens for domain, tokens in natural_tokens.items() if mix[domain] > 0)
    return {domain: share * total / natural_tokens[domain] if share else 0.0 for domain, share in mix.items()}


def _unit_hash(seed: int, *key: object) -> float:
    """A number in [0, 1) from a seeded hash of `key`: independent of the order documents come in."""
    digest = hashlib.blake2b(":".join(map(str, (seed, *key))).encode(), digest_size=7).digest()
    return int.from_bytes(digest, "little") / 2**56  # 56 bits: exact in a float64, never 1.0


def copies_per_document(ids: Sequence[str], tokens: np.ndarray, factor: float, seed: int) -> np.ndarray:
    """How many times each document of one domain (`tokens` each) is written to realise `factor`."""
    whole = math.floor(factor)
    copies = np.full(len(ids), whole, dtype=np.int64)
    goal = (factor - whole) * tokens.sum()  # tokens of the documents written once more
    order = np.array(sorted(range(len(ids)), key=lambda i: (_unit_hash(seed, "extra", ids[i]), i)), dtype=int)
    reached = np.concatenate(([0], np.cumsum(tokens[order])))
    take = int(np.argmin(np.abs(reached - goal)))  # the document boundary nearest the goal
    copies[order[:take]] += 1
    return copies


def mixed_order(ids: Sequence[str], copies: np.ndarray, seed: int) -> np.ndarray:
    """Indices into `ids`, i repeated `copies[i]` times, in a seeded order that spreads the copies of a
    document: copy c of m lands at a hashed point of the c-th of m equal stretches."""
    rows = np.repeat(np.arange(len(ids)), copies)
    keys = np.empty(len(rows))
    k = 0
    for i, m in enumerate(copies.tolist()):
        for c in range(m):
            keys[k] = (c + _unit_hash(seed, "order", ids[i], c)) / m
            k += 1
    return rows[np.argsort(keys, kind="stable")]


class TrainSpool:
    """The training documents of a mixed split, held on disk until their order is known.

    `add` (pass 1, in input order) appends a document's ids to the scratch file of its domain in
    `directory` and keeps four integers; `write` (pass 2) realises the mix, hands the documents to the
    split's writer in the mixed order, removes `directory` and returns meta.json's "mix" entry.
    """

    def __init__(
        self, directory: Path, dtype: np.dtype, mix: dict[str, float], domain_of: np.ndarray
    ) -> None:
        self.directory, self.dtype, self.mix = directory, np.dtype(dtype).newbyteorder("<"), mix
        self.domain_of = domain_of  # per document of the corpus, from `mix_domains`
        self.domains = list(mix)
        directory.mkdir()
        self._paths = [directory / f"domain-{d}.ids" for d in range(len(self.domains))]
        self._files = [open(path, "wb") for path in self._paths]  # noqa: SIM115 (closed in write())
        self._filled = [0] * len(self.domains)
        # per training document: its index in the corpus, domain, offset in its file, ids (no EOS), bytes
        self._columns = [array.array("q") for _ in range(5)]

    def add(self, doc: int, ids: np.ndarray, nbytes: int) -> None:
        """Spool document number `doc` of the corpus (its `ids` without EOS, `nbytes` UTF-8 bytes)."""
        domain = int(self.domain_of[doc])
        if self.mix[self.domains[domain]] > 0:  # a dropped domain's ids would never be read back
            self._files[domain].write(ids.astype(self.dtype).tobytes())
        values = (doc, domain, self._filled[domain], len(ids), nbytes)
        for column, value in zip(self._columns, values, strict=True):
            column.append(value)
        self._filled[domain] += len(ids)

    def write(
        self,
        ids: Sequence[str],
        emit: Callable[[np.ndarray, int, int], None],
        eos_id: int,
        seed: int,
        progress: bool,
    ) -> dict[str, Any]:
        """Call `emit(token ids, eos_id, nbytes)` per document copy in the mixed order (`ids`: the
        corpus's document ids, as numbered in `add`)."""
        for file in self._files:
            file.close()
        doc, domain, offset, length, nbytes = (np.frombuffer(c, dtype=np.int64) for c in self._columns)
        tokens = length + 1  # each document is written followed by EOS
        natural = {name: int(tokens[domain == d].sum()) for d, name in enumerate(self.domains)}
        factors = mix_factors(self.mix, natural)
        copies = np.zeros(len(doc), dtype=np.int64)
        for d, name in enumerate(self.domains):
            rows = np.flatnonzero(domain == d)
            copies[rows] = copies_per_document([ids[i] for i in doc[rows]], tokens[rows], factors[name], seed)
        order = mixed_order([ids[i] for i in doc], copies, seed)
        maps = [
            np.memmap(path, dtype=self.dtype, mode="r") if path.stat().st_size else np.empty(0, self.dtype)
            for path in self._paths
        ]
        for row in tqdm(order.tolist(), unit="doc", desc="mixing", disable=not progress):
            start = offset[row]
            emit(maps[domain[row]][start : start + length[row]], eos_id, int(nbytes[row]))
        del maps
        shutil.rmtree(self.directory)
        return self._summary(domain, tokens, copies, factors)

    def _summary(
        self, domain: np.ndarray, tokens: np.ndarray, copies: np.ndarray, factors: dict[str, float]
    ) -> dict[str, Any]:
        count = len(self.domains)
        documents = np.bincount(domain, minlength=count)
        natural = np.bincount(domain, weights=tokens, minlength=count).astype(np.int64)
        written_docs = np.bincount(domain, weights=copies, minlength=count).astype(np.int64)
        written = np.bincount(domain, weights=tokens * copies, minlength=count).astype(np.int64)
        rows = {
            name: {
                "documents": int(documents[d]),
                "natural_tokens": int(natural[d]),
                "natural_share": round(float(natural[d] / natural.sum()), 6),
                "target_share": round(self.mix[name], 6),
                "factor": round(factors[name], 6),
                "documents_written": int(written_docs[d]),
                "tokens_written": int(written[d]),
                "achieved_share": round(float(written[d] / written.sum()), 6),
            }
            for d, name in enumerate(self.domains)
        }
        total = {
            "documents": int(documents.sum()),
            "natural_tokens": int(natural.sum()),
            "target_tokens": int(sum(natural[d] for d, name in enumerate(self.domains) if self.mix[name])),
            "documents_written": int(written_docs.sum()),
            "tokens_written": int(written.sum()),
        }
        return {"split": "train", "domains": rows, "total": total}
