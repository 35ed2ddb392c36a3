"""Byte-level BPE: train, save, load, encode and decode, on top of HF `tokenizers` (Rust).

Design choices:
- byte-level BPE as in GPT-2: the ByteLevel pre-tokenizer (GPT-2 regex, no prefix space) and decoder,
  all 256 bytes in the initial alphabet, no normalizer, no unknown token, so decode(encode(x)) == x for
  every string;
- the special tokens of `forge.tokenizer.special` get ids 0..6; they are never produced from plain text:
  a document that contains the literal string "<|endoftext|>" is encoded as ordinary bytes
  (`encode_special_tokens`), and special ids are only ever inserted by code, by id;
- training is deterministic (no seed) and reads at most `max_train_bytes` of text, documents in order;
- a tokenizer directory holds `tokenizer.json` (HF format), `tokenizer_config.json` and
  `special_tokens_map.json` (so `transformers.PreTrainedTokenizerFast.from_pretrained(dir)` works and,
  with `split_special_tokens`, encodes exactly as forge does) and `forge_tokenizer.json` (forge's metadata);
- the fingerprint is a hash of the canonical tokenizer.json, used to check that token shards, models and
  tokenizers belong together;
- the documents reader lives here, not in `forge.data`, because the tokenizer is the bottom layer and
  `forge tokenizer train` reads documents too; `forge.data.shards` re-exports it.
"""

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

from forge.errors import CheckpointError, ConfigError, DataError
from forge.io import write_json, write_text
from forge.tokenizer.special import BOS, END_OF_TURN, EOS, PAD, SPECIAL_TOKENS

FORMAT_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class TokenizerConfig:
    vocab_size: int = 8192
    """number of tokens, special tokens included (at least 256 bytes + the special tokens)"""
    min_frequency: int = 2
    """a pair of tokens must occur at least this often to be merged"""
    max_train_bytes: int = 200_000_000
    """train on at most this many bytes of text (UTF-8), taking documents in order"""

    def __post_init__(self) -> None:
        smallest = 256 + len(SPECIAL_TOKENS)
        if not smallest <= self.vocab_size <= 2**32 - 1:
            raise ConfigError(
                f"--vocab-size must be between {smallest} (256 bytes + {len(SPECIAL_TOKENS)} special tokens) "
                f"and 2**32-1, got {self.vocab_size}"
            )
        if self.min_frequency < 1:
            raise ConfigError(f"--min-frequency must be at least 1, got {self.min_frequency}")
        if self.max_train_bytes < 1:
            raise ConfigError(f"--max-train-bytes must be positive, got {self.max_train_bytes}")


@cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's table from the printable characters ByteLevel uses back to the bytes they stand for."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return {char: b for b, char in table.items()}


# ---------------------------------------------------------------------------------------------------------
# documents (the Parquet shards written by `forge data prepare`)


def doc_files(docs_dir: str | Path) -> list[Path]:
    """The docs-*.parquet files of a documents directory, in order; DataError when there are none."""
    files = sorted(Path(docs_dir).glob("docs-*.parquet"))
    if not files:
        raise DataError(f"{docs_dir} holds no docs-*.parquet files; run `forge data prepare` first")
    return files


def count_documents(docs_dir: str | Path) -> int:
    """Number of documents, from the Parquet metadata (reads no text)."""
    return sum(pq.ParquetFile(path).metadata.num_rows for path in doc_files(docs_dir))


def read_doc_texts(docs_dir: str | Path, *, batch_size: int = 1024) -> Iterator[tuple[str, str]]:
    """Yield (id, text) of every document in order, streaming record batches (bounded memory)."""
    for path in doc_files(docs_dir):
        parquet = pq.ParquetFile(path)
        missing = {"id", "text"} - set(parquet.schema_arrow.names)
        if missing:
            raise DataError(f"{path} has no column(s) {sorted(missing)}; rerun `forge data prepare`")
        for batch in parquet.iter_batches(batch_size=batch_size, columns=["id", "text"]):
            yield from zip(batch.column("id").to_pylist(), batch.column("text").to_pylist(), strict=True)


# ---------------------------------------------------------------------------------------------------------
# the tokenizer


class Tokenizer:
    """A trained byte-level BPE tokenizer with forge's special tokens at ids 0..6."""

    def __init__(self, hf_tokenizer: tokenizers.Tokenizer) -> None:
        self._tokenizer = hf_tokenizer
        self._token_bytes: list[bytes] | None = None
        # plain text is plain text: added tokens are matched only when inserted by id
        self._tokenizer.encode_special_tokens = True
        found = {token: self._tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
        expected = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
        if found != expected:
            raise ValueError(f"special tokens must have ids {expected}, found {found}")

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """Load a tokenizer directory written by `save` (or `forge tokenizer train`)."""
        directory = Path(path)
        hint = f"run `forge tokenizer train` to create {directory}"
        for name in ("tokenizer.json", "forge_tokenizer.json"):
            if not (directory / name).is_file():
                raise CheckpointError(f"{directory} is not a tokenizer directory (no {name}); {hint}")
        try:
            meta = json.loads((directory / "forge_tokenizer.json").read_text(encoding="utf-8"))
            tokenizer = cls(tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json")))
        except Exception as e:  # corrupt JSON, a foreign tokenizer, wrong special ids
            raise CheckpointError(f"cannot load the tokenizer in {directory}: {e}; {hint}") from e
        if meta.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{directory / 'forge_tokenizer.json'} has format version {meta.get('format_version')}, "
                f"this forge reads {FORMAT_VERSION}; {hint}"
            )
        return tokenizer

    def save(self, directory: str | Path) -> None:
        """Write tokenizer.json, the transformers config files and forge_tokenizer.json (each atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_text(directory / "tokenizer.json", self._tokenizer.to_str(pretty=True))
        tokens_map = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
        extra = [token for token in SPECIAL_TOKENS if token not in tokens_map.values()]
        write_json(directory / "special_tokens_map.json", {**tokens_map, "additional_special_tokens": extra})
        hf_config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **tokens_map,
            "additional_special_tokens": extra,
            "clean_up_tokenization_spaces": False,
            "split_special_tokens": True,  # encode special strings in text as bytes, as forge does
        }
        write_json(directory / "tokenizer_config.json", hf_config)
        meta = {
            "format_version": FORMAT_VERSION,
            "special_tokens": self.special_ids,
            "vocab_size": self.vocab_size,
            "fingerprint": self.fingerprint(),
        }
        write_json(directory / "forge_tokenizer.json", meta)  # last: its presence marks a complete directory

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> dict[str, int]:
        return {token: i for i, token in enumerate(SPECIAL_TOKENS)}

    @property
    def bos_id(self) -> int:
        return SPECIAL_TOKENS.index(BOS)

    @property
    def eos_id(self) -> int:
        return SPECIAL_TOKENS.index(EOS)

    @property
    def pad_id(self) -> int:
        return SPECIAL_TOKENS.index(PAD)

    @property
    def end_of_turn_id(self) -> int:
        return SPECIAL_TOKENS.index(END_OF_TURN)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; adds no special tokens and never turns text into special tokens."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` of many texts, in parallel threads (Rust)."""
        return [e.ids for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text of `ids`; byte sequences that are not valid UTF-8 become U+FFFD."""
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_bytes(self) -> list[bytes]:
        """The raw bytes each token id stands for (b"" for special tokens); computed once, then shared."""
        if self._token_bytes is None:
            self._token_bytes = self._compute_token_bytes()
        return self._token_bytes

    def _compute_token_bytes(self) -> list[bytes]:
        decoder = _byte_decoder()
        special = set(SPECIAL_TOKENS)
        result = []
        for i in range(self.vocab_size):
            token = self._tokenizer.id_to_token(i) or ""  # ids are contiguous: never None
            result.append(b"" if token in special else bytes(decoder[char] for char in token))
        return result

    def token_byte_lengths(self) -> np.ndarray:
        """Number of bytes of each token id as int32 (0 for special tokens), for bits per byte."""
        return np.array([len(b) for b in self.token_bytes()], dtype=np.int32)

    def fingerprint(self) -> str:
        """First 16 hex digits of the sha256 of the canonical (sorted, compact) tokenizer.json."""
        canonical = json.dumps(json.loads(self._tokenizer.to_str()), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------
# training


def _capped(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
    """Yield texts until `max_bytes` UTF-8 bytes have been yielded (the last one cut to fit)."""
    remaining = max_bytes
    for text in texts:
        data = text.encode("utf-8")
        if len(data) >= remaining:
            yield data[:remaining].decode("utf-8", errors="ignore")
            return
        remaining -= len(data)
        yield text


def train_tokenizer(texts: Iterable[str], config: TokenizerConfig, *, progress: bool = False) -> Tokenizer:
    """Train a byte-level BPE tokenizer on `texts` (deterministic for the same texts and config)."""
    hf_tokenizer = tokenizers.Tokenizer(models.BPE())
    hf_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf_tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    hf_tokenizer.train_from_iterator(_capped(texts, config.max_train_bytes), trainer=trainer)
    return Tokenizer(hf_tokenizer)


def train_from_docs(
    docs_dir: str | Path, out_dir: str | Path, config: TokenizerConfig, progress: bool = True
) -> Tokenizer:
    """Train on the documents of `docs_dir` (written by `forge data prepare`) and save to `out_dir`."""
    total = count_documents(docs_dir)
    if total == 0:
        raise DataError(f"{docs_dir} holds no documents; check the inputs of `forge data prepare`")
    docs = tqdm(read_doc_texts(docs_dir), total=total, unit="doc", desc="reading", disable=not progress)
    tokenizer = train_tokenizer((text for _, text in docs), config, progress=progress)
    docs.close()
    tokenizer.save(out_dir)
    return tokenizer


# ---------------------------------------------------------------------------------------------------------
# process-pool helpers for `forge data tokenize`: each worker loads the tokenizer once


_worker_tokenizer: Tokenizer | None = None


def init_worker(directory: str) -> None:
    """Pool initializer: load the tokenizer once per worker; one thread each, the pool is the parallelism."""
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = Tokenizer.load(directory)


def encode_in_worker(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Encode texts in a pool worker; returns (all ids concatenated as uint32, number of ids per text)."""
    assert _worker_tokenizer is not None, "init_worker was not called"
    return encode_flat(_worker_tokenizer, texts)


def encode_flat(tokenizer: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Encode texts into (all ids concatenated as uint32, number of ids per text): cheap to pickle."""
    encoded = tokenizer.encode_batch(texts)
    lengths = np.array([len(ids) for ids in encoded], dtype=np.int64)
    flat = np.fromiter((i for ids in encoded for i in ids), dtype=np.uint32, count=int(lengths.sum()))
    return flat, lengths
