"""Token shards: documents → flat binary files of token ids, and the loaders that read them back.

Format (the contract with training): `train-00000.bin`, `val-00000.bin`, … are flat little-endian arrays
of token ids, uint16 when the vocabulary fits (≤ 65,536) else uint32, each document followed by the EOS
id; `meta.json` records the dtype, the tokenizer's fingerprint, and per split the files, tokens
(separators included), documents and UTF-8 bytes. Files are read with `numpy.memmap`, so a corpus larger
than memory costs nothing to open.

Design choices:
- the validation split is by document, not by token range, so no document is in both; the documents
  with the smallest `blake2b(seed, id)` hashes are held out, which is deterministic, independent of the
  input order and of the number of workers, and gives exactly round(val_fraction · N) documents (at
  least one each way);
- encoding runs in a process pool (one tokenizer per worker, loaded once), chunks in input order, so the
  shards are the same whatever the number of workers;
- `BatchLoader` draws random windows whose positions depend only on (seed, rank, batch number): its whole
  state is one integer, so resuming is exact;
- `ReplayLoader` fills a fixed share of every batch from a second set of shards (replay of the original
  domain in continued pretraining) with a second `BatchLoader` on its own generator stream;
- `iter_eval_batches` reads fixed, non-overlapping windows in order: every evaluation of a split sees
  the same tokens, whatever the batch size;
- `--mix` resamples the training split to a target share of tokens per domain (see `forge.data.mix`);
  validation keeps the corpus's natural distribution. Without it, documents are written in input order.
"""

import hashlib
import itertools
import json
import multiprocessing
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from forge.config import to_dict
from forge.data.mix import TrainSpool, mix_domains, parse_mix
from forge.errors import ConfigError, DataError
from forge.io import atomic_dir, write_json
from forge.runtime import available_cores
from forge.tokenizer.bpe import (
    Tokenizer,
    doc_files,
    encode_flat,
    encode_in_worker,
    init_worker,
    read_doc_texts,
)

__all__ = [
    "BatchLoader",
    "PrefetchLoader",
    "ReplayLoader",
    "TokenShards",
    "TokenizeConfig",
    "iter_eval_batches",
    "read_doc_texts",
    "tokenize_docs",
]

FORMAT_VERSION = 1
SPLITS = ("train", "val")


@dataclass(frozen=True, kw_only=True)
class TokenizeConfig:
    """Options of `forge data tokenize`."""

    val_fraction: float = 0.05
    """fraction of documents held out for validation (chosen by a hash of the document id and --seed)"""
    seed: int = 0
    """seed of the train/validation split"""
    num_workers: int = 0
    """encoding processes (0 = the cores available; 1 = in this process)"""
    shard_tokens: int = 100_000_000
    """start a new .bin file after this many tokens"""
    docs_per_task: int = 256
    """documents sent to a worker at a time"""
    progress: bool = True
    """show a progress bar"""
    mix: str = ""
    """target share of training tokens per domain, e.g. 'code=0.7,docs=0.3' (empty: the corpus as it is);
    domains are resampled up (repeated) or down to hit it; validation keeps the natural mix"""

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be in [0, 1), got {self.val_fraction}; try 0.05")
        for name in ("shard_tokens", "docs_per_task"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ConfigError(f"--num-workers must be 0 (all cores) or more, got {self.num_workers}")
        parse_mix(self.mix)  # a malformed --mix fails before any work


# ---------------------------------------------------------------------------------------------------------
# writing


def _split_hash(seed: int, doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest(), "little")


def choose_val(ids: list[str], val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask over `ids`: True for the held-out documents (see the module docstring)."""
    n = len(ids)
    mask = np.zeros(n, dtype=bool)
    if val_fraction == 0 or n < 2:
        return mask
    n_val = min(max(1, round(val_fraction * n)), n - 1)
    order = sorted(range(n), key=lambda i: (_split_hash(seed, ids[i]), i))
    mask[order[:n_val]] = True
    return mask


class _TokenWriter:
    """Appends documents (ids + EOS) to `{split}-00000.bin`, … rolling over every `shard_tokens` tokens."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, dtype, shard_tokens
        self.files: list[str] = []
        self.tokens = self.documents = self.bytes = 0
        self._file: Any = None
        self._in_file = 0

    def add(self, ids: np.ndarray, eos_id: int, nbytes: int) -> None:
        if self._file is None or self._in_file >= self.shard_tokens:
            self._open_next()
        data = np.empty(len(ids) + 1, dtype=self.dtype)  # the document, then EOS
        data[:-1], data[-1] = ids, eos_id
        self._file.write(data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes())
        self._in_file += len(data)
        self.tokens += len(data)
        self.documents += 1
        self.bytes += nbytes

    def _open_next(self) -> None:
        self.close()
        name = f"{self.split}-{len(self.files):05d}.bin"
        self.files.append(name)
        self._file = open(self.directory / name, "wb")  # noqa: SIM115 (closed in close())
        self._in_file = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def summary(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "tokens": self.tokens,
            "documents": self.documents,
            "bytes": self.bytes,
            "bytes_per_token": self.bytes / self.tokens if self.tokens else 0.0,
        }


def _chunks(docs_dir: str | Path, size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for _, text in read_doc_texts(docs_dir):
        chunk.append(text)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _encoded(
    docs_dir: str | Path, tokenizer: Tokenizer, tokenizer_dir: str | Path, config: TokenizeConfig
) -> Iterator[tuple[list[str], tuple[np.ndarray, np.ndarray]]]:
    """(texts, (flat ids, lengths)) per chunk of documents, in order, from a pool of `num_workers`."""
    workers = config.num_workers or available_cores()
    if workers == 1:
        for texts in _chunks(docs_dir, config.docs_per_task):
            yield texts, encode_flat(tokenizer, texts)
        return
    # spawn, not fork: the parent may hold torch or tokenizers thread pools that a fork would break
    context = multiprocessing.get_context("spawn")
    chunks = _chunks(docs_dir, config.docs_per_task)
    with context.Pool(workers, initializer=init_worker, initargs=(str(tokenizer_dir),)) as pool:
        # a bounded window of chunks in flight keeps memory flat however large the corpus
        while window := list(itertools.islice(chunks, 4 * workers)):
            yield from zip(window, pool.map(encode_in_worker, window), strict=True)


def tokenize_docs(
    docs_dir: str | Path, tokenizer_dir: str | Path, out_dir: str | Path, config: TokenizeConfig
) -> dict[str, Any]:
    """Encode the documents of `docs_dir` into train/val token shards in `out_dir`; return meta.json."""
    tokenizer = Tokenizer.load(tokenizer_dir)
    ids = [
        i
        for path in doc_files(docs_dir)
        for i in pq.read_table(path, columns=["id"]).column("id").to_pylist()
    ]
    if not ids:
        raise DataError(f"{docs_dir} holds no documents; check the inputs of `forge data prepare`")
    is_val = choose_val(ids, config.val_fraction, config.seed)
    mix = parse_mix(config.mix)
    domain_of = mix_domains(docs_dir, mix, is_val) if mix else None
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    with atomic_dir(out_dir) as tmp:
        writers = {split: _TokenWriter(tmp, split, dtype, config.shard_tokens) for split in SPLITS}
        spool = None if domain_of is None else TrainSpool(tmp / "mix-scratch", dtype, mix, domain_of)
        bar = tqdm(total=len(ids), unit="doc", desc="tokenizing", disable=not config.progress)
        index = 0
        for texts, (flat, lengths) in _encoded(docs_dir, tokenizer, tokenizer_dir, config):
            starts = np.concatenate(([0], np.cumsum(lengths)))
            for k, text in enumerate(texts):
                doc, nbytes = flat[starts[k] : starts[k + 1]], len(text.encode("utf-8"))
                if spool is not None and not is_val[index]:  # the mixed train split: written in pass 2
                    spool.add(index, doc, nbytes)
                else:
                    writers["val" if is_val[index] else "train"].add(doc, tokenizer.eos_id, nbytes)
                index += 1
            bar.update(len(texts))
        bar.close()
        mixed = None
        if spool is not None:
            mixed = spool.write(ids, writers["train"].add, tokenizer.eos_id, config.seed, config.progress)
        for writer in writers.values():
            writer.close()
        meta = {
            "format_version": FORMAT_VERSION,
            "dtype": dtype.name,
            "vocab_size": tokenizer.vocab_size,
            "eos_id": tokenizer.eos_id,
            "tokenizer_fingerprint": tokenizer.fingerprint(),
            "docs": str(Path(docs_dir).resolve()),
            "tokenizer": str(Path(tokenizer_dir).resolve()),
            "config": to_dict(config),
            "splits": {split: writer.summary() for split, writer in writers.items()},
        }
        if mixed is not None:
            meta["mix"] = mixed
        write_json(tmp / "meta.json", meta)
    return meta


# ---------------------------------------------------------------------------------------------------------
# reading


class TokenShards:
    """The token files of one split, memory-mapped; `len()` is the number of tokens."""

    def __init__(self, directory: str | Path, split: str) -> None:
        self.directory = Path(directory)
        meta_path = self.directory / "meta.json"
        if not meta_path.is_file():
            raise DataError(
                f"{self.directory} holds no token shards (no meta.json); "
                "run `forge data tokenize` to create them"
            )
        self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        if split not in self.meta.get("splits", {}):
            raise DataError(f"{meta_path} has no {split!r} split; re-run `forge data tokenize`")
        dtype = np.dtype(self.meta["dtype"]).newbyteorder("<")
        self.arrays: list[np.ndarray] = []
        for name in self.meta["splits"][split]["files"]:
            path = self.directory / name
            if not path.is_file() or path.stat().st_size % dtype.itemsize:
                raise DataError(f"{path} is missing or truncated; re-run `forge data tokenize`")
            if path.stat().st_size:
                self.arrays.append(np.memmap(path, dtype=dtype, mode="r"))
        self.split = split

    def __len__(self) -> int:
        return sum(len(a) for a in self.arrays)


class BatchLoader:
    """Random training windows: global batch n holds `batch_size × world_size` windows of `seq_len + 1`
    tokens drawn from the generator seeded by (seed, stream, n), and rank r reads rows r·batch_size onwards,
    so N processes together read exactly the batches one process with N times the batch would.
    `state_dict()` is that n, so a resumed run (with any number of processes) reads what it would have.
    Loaders sharing a seed but not a `stream` draw independent windows."""

    def __init__(
        self,
        shards: TokenShards,
        batch_size: int,
        seq_len: int,
        *,
        seed: int = 0,
        stream: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.shards, self.batch_size, self.seq_len, self.seed = shards, batch_size, seq_len, seed
        self.stream, self.rank, self.world_size = stream, rank, world_size
        self.position = 0
        window = seq_len + 1
        starts = np.array([max(0, len(a) - window + 1) for a in shards.arrays], dtype=np.int64)
        if starts.sum() == 0:
            raise DataError(
                f"the {shards.split} split of {shards.directory} has {len(shards):,} tokens, fewer "
                f"than one window of --seq-len {seq_len} + 1; use a smaller --seq-len or more data"
            )
        self._ends = np.cumsum(starts)  # window starts of shard i are numbered ends[i-1] .. ends[i]-1

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (batch_size, seq_len) int64, targets shifted by one token."""
        rng = np.random.Generator(np.random.PCG64([self.seed, self.stream, self.position]))
        self.position += 1
        picks = rng.integers(0, self._ends[-1], size=self.batch_size * self.world_size)
        picks = picks[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]  # this rank's rows
        shard_of = np.searchsorted(self._ends, picks, side="right")
        offsets = picks - np.concatenate(([0], self._ends))[shard_of]
        window = self.seq_len + 1
        rows = np.stack(
            [self.shards.arrays[s][o : o + window] for s, o in zip(shard_of, offsets, strict=True)]
        )
        batch = torch.from_numpy(rows.astype(np.int64))  # (B, T + 1)
        return batch[:, :-1], batch[:, 1:]

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "position" not in state:
            raise DataError(
                "the checkpoint's data state is a replay loader's: the run was started with --replay-data; "
                "resume it with the same --replay-data and --replay-fraction"
            )
        self.position = int(state["position"])


class ReplayLoader:
    """Batches whose last round(replay_fraction · batch_size) rows come from `replay` (the original
    domain, replayed against forgetting) and the others from `shards`, each part drawn by its own
    `BatchLoader` (the replay one on generator stream 1). The share is the same in every batch and on
    every rank (each rank reads its rows of both parts), and `state_dict()` holds both loaders' states,
    so resuming is exact."""

    def __init__(
        self,
        shards: TokenShards,
        replay: TokenShards,
        batch_size: int,
        seq_len: int,
        *,
        replay_fraction: float,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        replay_rows = round(replay_fraction * batch_size)
        if not 0 < replay_rows < batch_size:
            raise ConfigError(
                f"--replay-fraction {replay_fraction} of --batch-size {batch_size} gives {replay_rows} "
                "replay rows; both the new and the replayed data need at least one row"
            )
        where = {"seed": seed, "rank": rank, "world_size": world_size}
        self.main = BatchLoader(shards, batch_size - replay_rows, seq_len, **where)
        self.replay = BatchLoader(replay, replay_rows, seq_len, stream=1, **where)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (batch_size, seq_len) int64: the new data's rows, then the replayed."""
        x, y = self.main.next_batch()
        replay_x, replay_y = self.replay.next_batch()
        return torch.cat([x, replay_x]), torch.cat([y, replay_y])

    def state_dict(self) -> dict[str, Any]:
        return {"data": self.main.state_dict(), "replay": self.replay.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "replay" not in state:
            raise DataError(
                "the checkpoint's data state has no replay loader: the run was started without "
                "--replay-data; resume it with the options it was started with"
            )
        self.main.load_state_dict(state["data"])
        self.replay.load_state_dict(state["replay"])


_Prefetched = tuple[torch.Tensor, torch.Tensor, dict[str, Any]]  # a batch and the loader's state after it


class PrefetchLoader:
    """A loader (`BatchLoader`, `ReplayLoader`) with the next `depth` batches assembled by a background
    thread while the current step runs (pinned for a fast copy when the device is a GPU). Each batch
    travels with the loader's state after it, so `state_dict()` is the state of the batches handed out,
    not of those prepared ahead, and a checkpoint resumes exactly as without prefetching."""

    def __init__(
        self, loader: BatchLoader | ReplayLoader, depth: int = 2, *, pin_memory: bool = False
    ) -> None:
        self.loader, self.depth, self.pin_memory = loader, depth, pin_memory
        self._start()

    def _start(self) -> None:
        self._state: dict[str, Any] = self.loader.state_dict()
        self._queue: queue.Queue[_Prefetched | BaseException] = queue.Queue(self.depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="forge-prefetch", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        while not self._stop.is_set():
            try:
                x, y = self.loader.next_batch()
                if self.pin_memory:
                    x, y = x.pin_memory(), y.pin_memory()
                item: _Prefetched | BaseException = (x, y, self.loader.state_dict())
            except BaseException as error:  # handed to the consumer, raised there
                item = error
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        x, y, self._state = item
        return x, y

    def state_dict(self) -> dict[str, Any]:
        return self._state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.close()
        self.loader.load_state_dict(state)
        self._start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def iter_eval_batches(
    shards: TokenShards, batch_size: int, seq_len: int, max_batches: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive non-overlapping windows of the split, in order, `batch_size` at a time.

    A split too short for one full window is read as one shorter window per file.
    """
    windows = [(a, s, seq_len) for a in shards.arrays for s in range(0, len(a) - seq_len, seq_len)]
    if not windows:  # windows of different lengths: one per batch
        windows, batch_size = [(a, 0, len(a) - 1) for a in shards.arrays if len(a) >= 2], 1
    for count, first in enumerate(range(0, len(windows), batch_size)):
        if max_batches is not None and count >= max_batches:
            return
        group = windows[first : first + batch_size]
        rows = np.stack([a[s : s + length + 1] for a, s, length in group]).astype(np.int64)
        batch = torch.from_numpy(rows)  # (B, T + 1)
        yield batch[:, :-1], batch[:, 1:]
