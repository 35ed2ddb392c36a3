"""Token shards: the split, the file format, parallel encoding, and the two loaders."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from forge.data.shards import (
    BatchLoader,
    PrefetchLoader,
    ReplayLoader,
    TokenizeConfig,
    TokenShards,
    choose_val,
    iter_eval_batches,
    tokenize_docs,
)
from forge.errors import ConfigError, DataError
from forge.tokenizer.bpe import Tokenizer, TokenizerConfig, train_tokenizer

TEXTS = [f"def f{i}(x):\n    return x * {i}  # 中文 🎉 number {i}\n" * (1 + i % 3) for i in range(40)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Tokenizer]:
    root = tmp_path_factory.mktemp("shards")
    docs = root / "docs"
    docs.mkdir()
    ids = [f"doc{i}" for i in range(len(TEXTS))]
    half = len(TEXTS) // 2
    for k, part in enumerate((slice(0, half), slice(half, None))):  # two files, as prepare may write
        table = pa.table(
            {"id": ids[part], "text": TEXTS[part], "source": ids[part], "domain": ["code"] * half}
        )
        pq.write_table(table, docs / f"docs-{k:05d}.parquet")
    tokenizer = train_tokenizer(TEXTS, TokenizerConfig(vocab_size=300))
    tokenizer.save(root / "tok")
    return docs, root / "tok", tokenizer


def _documents(shards: TokenShards, eos_id: int) -> list[list[int]]:
    flat = np.concatenate(shards.arrays).tolist()
    docs, current = [], []
    for token in flat:
        if token == eos_id:
            docs.append(current)
            current = []
        else:
            current.append(token)
    assert current == [], "every document ends with EOS"
    return docs


def test_tokenize_writes_every_document_once(setup: tuple[Path, Path, Tokenizer], tmp_path: Path) -> None:
    docs, tok_dir, tokenizer = setup
    meta = tokenize_docs(
        docs, tok_dir, tmp_path / "out", TokenizeConfig(val_fraction=0.25, num_workers=1, progress=False)
    )
    assert meta["dtype"] == "uint16" and meta["tokenizer_fingerprint"] == tokenizer.fingerprint()
    assert meta["splits"]["val"]["documents"] == 10 and meta["splits"]["train"]["documents"] == 30
    decoded = []
    for split in ("train", "val"):
        shards = TokenShards(tmp_path / "out", split)
        assert len(shards) == meta["splits"][split]["tokens"]
        documents = _documents(shards, tokenizer.eos_id)
        decoded += [tokenizer.decode(ids) for ids in documents]
        assert meta["splits"][split]["bytes"] == sum(len(t.encode()) for t in decoded[-len(documents) :])
    assert sorted(decoded) == sorted(TEXTS)
    raw = (tmp_path / "out" / "train-00000.bin").read_bytes()  # little-endian uint16 on disk
    assert (
        np.frombuffer(raw, dtype="<u2").tolist()
        == np.concatenate(TokenShards(tmp_path / "out", "train").arrays).tolist()
    )


def test_workers_and_shard_size_do_not_change_the_tokens(
    setup: tuple[Path, Path, Tokenizer], tmp_path: Path
) -> None:
    docs, tok_dir, _ = setup
    one = tokenize_docs(docs, tok_dir, tmp_path / "one", TokenizeConfig(num_workers=1, progress=False))
    two = tokenize_docs(
        docs,
        tok_dir,
        tmp_path / "two",
        TokenizeConfig(num_workers=2, docs_per_task=7, shard_tokens=300, progress=False),
    )
    assert len(two["splits"]["train"]["files"]) > 1
    for split in ("train", "val"):
        a = np.concatenate(TokenShards(tmp_path / "one", split).arrays)
        b = np.concatenate(TokenShards(tmp_path / "two", split).arrays)
        assert np.array_equal(a, b)
        assert one["splits"][split]["tokens"] == two["splits"][split]["tokens"]


def test_validation_split_is_by_document_and_deterministic() -> None:
    ids = [f"d{i}" for i in range(1000)]
    mask = choose_val(ids, 0.1, seed=0)
    assert mask.sum() == 100
    assert np.array_equal(mask, choose_val(ids, 0.1, seed=0))
    assert not np.array_equal(mask, choose_val(ids, 0.1, seed=1))
    # independent of the order the documents come in
    reordered = ids[::-1]
    assert {i for i, m in zip(reordered, choose_val(reordered, 0.1, seed=0), strict=True) if m} == {
        i for i, m in zip(ids, mask, strict=True) if m
    }
    assert choose_val(ids[:3], 0.01, seed=0).sum() == 1  # at least one document each way
    assert choose_val(ids[:2], 0.99, seed=0).sum() == 1
    assert choose_val(ids, 0.0, seed=0).sum() == 0


def _shards(tmp_path: Path, n_tokens: int, split: str = "train", first: int = 0) -> TokenShards:
    tmp_path.mkdir(exist_ok=True)
    tokens = np.arange(first, first + n_tokens, dtype="<u2")
    (tmp_path / f"{split}-00000.bin").write_bytes(tokens.tobytes())
    meta = {"dtype": "uint16", "splits": {split: {"files": [f"{split}-00000.bin"]}}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    return TokenShards(tmp_path, split)


def test_batch_loader_windows_and_exact_resume(tmp_path: Path) -> None:
    shards = _shards(tmp_path, 1000)
    loader = BatchLoader(shards, batch_size=4, seq_len=16, seed=3)
    batches = [loader.next_batch() for _ in range(5)]
    for x, y in batches:
        assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
        assert torch.equal(y[:, :-1], x[:, 1:])  # targets are the inputs shifted by one
        assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(4, 15, dtype=torch.int64))  # contiguous windows
    resumed = BatchLoader(shards, batch_size=4, seq_len=16, seed=3)
    resumed.load_state_dict({"position": 3})
    assert torch.equal(resumed.next_batch()[0], batches[3][0])
    # two ranks with 4 rows each read, together, the rows of one loader with 8
    whole = BatchLoader(shards, batch_size=8, seq_len=16, seed=3).next_batch()[0]
    ranks = [BatchLoader(shards, batch_size=4, seq_len=16, seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert torch.equal(torch.cat([r.next_batch()[0] for r in ranks]), whole)
    with pytest.raises(DataError, match="smaller --seq-len"):
        BatchLoader(shards, batch_size=4, seq_len=1000)


def test_eval_batches_cover_the_split_in_order_whatever_the_batch_size(tmp_path: Path) -> None:
    shards = _shards(tmp_path, 101, "val")
    rows = [x for batch_size in (1, 3) for x, _ in iter_eval_batches(shards, batch_size, 10)]
    by_one = torch.cat(rows[:10])
    assert torch.equal(by_one, torch.cat(rows[10:]))
    assert torch.equal(by_one.flatten(), torch.arange(100))  # 10 windows of 10, targets up to token 100
    assert len(list(iter_eval_batches(shards, 3, 10, max_batches=2))) == 2
    short = list(iter_eval_batches(shards, 4, 500))  # shorter than one window: one shorter window
    assert len(short) == 1 and short[0][0].shape == (1, 100)


def test_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="forge data tokenize"):
        TokenShards(tmp_path, "train")
    _shards(tmp_path, 10)
    (tmp_path / "train-00000.bin").write_bytes(b"\x00\x01\x02")  # torn: odd number of bytes
    with pytest.raises(DataError, match="truncated"):
        TokenShards(tmp_path, "train")
    with pytest.raises(ConfigError, match="--val-fraction"):
        TokenizeConfig(val_fraction=1.0)


def test_prefetching_gives_the_same_batches_and_resumes_at_what_was_handed_out(tmp_path: Path) -> None:
    shards = _shards(tmp_path, 1000)
    plain = BatchLoader(shards, batch_size=4, seq_len=16, seed=3)
    expected = [plain.next_batch()[0] for _ in range(6)]
    prefetch = PrefetchLoader(BatchLoader(shards, batch_size=4, seq_len=16, seed=3), depth=3)
    got = [prefetch.next_batch()[0] for _ in range(2)]
    assert prefetch.state_dict() == {"position": 2}  # not the batches prepared ahead
    prefetch.load_state_dict({"position": 4})
    got += [prefetch.next_batch()[0] for _ in range(2)]
    prefetch.close()
    assert all(torch.equal(a, b) for a, b in zip(got, expected[:2] + expected[4:6], strict=True))


def test_replay_loader_fills_its_share_of_every_batch_and_resumes_exactly(tmp_path: Path) -> None:
    new = _shards(tmp_path / "new", 1000)  # token ids 0..999
    old = _shards(tmp_path / "old", 1000, first=2000)  # 2000..2999: disjoint from the new ones

    def loader(fraction: float = 0.5, **where: int) -> ReplayLoader:
        return ReplayLoader(new, old, 8, 16, replay_fraction=fraction, seed=3, **where)

    first = loader()
    batches = [first.next_batch() for _ in range(4)]
    for x, y in batches:
        assert x.shape == y.shape == (8, 16) and torch.equal(y[:, :-1], x[:, 1:])
        assert (x < 1000).all(dim=1)[:4].all() and (x >= 2000).all(dim=1)[4:].all()  # 4 new rows, 4 old
    assert not torch.equal(batches[0][0], batches[1][0])
    quarter = loader(0.25).next_batch()[0]
    assert (quarter >= 2000).all(dim=1).tolist() == [False] * 6 + [True] * 2  # round(0.25 · 8) rows
    assert first.state_dict() == {"data": {"position": 4}, "replay": {"position": 4}}

    resumed = loader()
    resumed.load_state_dict({"data": {"position": 2}, "replay": {"position": 2}})
    assert torch.equal(resumed.next_batch()[0], batches[2][0])
    prefetch = PrefetchLoader(loader(), depth=3)
    assert torch.equal(prefetch.next_batch()[0], batches[0][0])
    assert prefetch.state_dict() == {"data": {"position": 1}, "replay": {"position": 1}}
    prefetch.close()
    # two ranks with 4 rows each read, together, the new and the replayed rows of one loader with 8
    ranks = [ReplayLoader(new, old, 4, 16, replay_fraction=0.5, seed=3, rank=r, world_size=2) for r in (0, 1)]
    parts = [r.next_batch()[0] for r in ranks]
    assert torch.equal(torch.cat([p[:2] for p in parts]), batches[0][0][:4])
    assert torch.equal(torch.cat([p[2:] for p in parts]), batches[0][0][4:])

    with pytest.raises(ConfigError, match="at least one row"):
        loader(0.05)
    with pytest.raises(DataError, match="--replay-data"):
        loader().load_state_dict({"position": 3})
    with pytest.raises(DataError, match="--replay-data"):
        BatchLoader(new, 4, 16).load_state_dict(first.state_dict())
