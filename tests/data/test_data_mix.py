"""Domain weights (`forge data tokenize --mix`): parsing, factors, their realisation, the mixed split."""

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forge.data.mix import check_domains, copies_per_document, mix_factors, mixed_order, parse_mix
from forge.data.shards import TokenizeConfig, TokenShards, choose_val, tokenize_docs
from forge.errors import ConfigError, DataError
from forge.tokenizer.bpe import Tokenizer, TokenizerConfig, train_tokenizer

# 30 long "code" documents and 10 short "docs" ones: code holds most of the tokens
CODE = [f"def f{i}(x):\n    return x + {i} * y\n" * (2 + i % 4) for i in range(30)]
DOCS = [f"Page {i} explains the docs.\n" * (1 + i % 3) for i in range(10)]
TEXTS = CODE + DOCS
DOMAINS = ["code"] * len(CODE) + ["docs"] * len(DOCS)
IDS = [f"doc{i}" for i in range(len(TEXTS))]
MIX = "code=0.5,docs=0.5"


BASE = TokenizeConfig(val_fraction=0.25, num_workers=1, progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Tokenizer]:
    root = tmp_path_factory.mktemp("mix")
    docs = root / "docs"
    docs.mkdir()
    order = [i for pair in zip(range(10), range(30, 40), strict=True) for i in pair] + list(range(10, 30))
    for k, part in enumerate((order[:20], order[20:])):  # domains interleaved, over two files
        columns = {"id": IDS, "text": TEXTS, "source": IDS, "domain": DOMAINS}
        table = pa.table({name: [values[i] for i in part] for name, values in columns.items()})
        pq.write_table(table, docs / f"docs-{k:05d}.parquet")
    tokenizer = train_tokenizer(TEXTS, TokenizerConfig(vocab_size=300))
    tokenizer.save(root / "tok")
    return docs, root / "tok", tokenizer


@pytest.fixture(scope="module")
def runs(corpus: tuple[Path, Path, Tokenizer], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The corpus tokenized without a mix and with MIX (each once per module)."""
    docs, tok, _ = corpus
    root = tmp_path_factory.mktemp("runs")
    tokenize_docs(docs, tok, root / "plain", BASE)
    tokenize_docs(docs, tok, root / "mixed", replace(BASE, mix=MIX))
    return {"plain": root / "plain", "mixed": root / "mixed"}


def _documents(directory: Path, split: str, eos_id: int) -> list[tuple[int, ...]]:
    flat = np.concatenate(TokenShards(directory, split).arrays).tolist()
    ends = [i for i, token in enumerate(flat) if token == eos_id]
    return [tuple(flat[start + 1 : end]) for start, end in zip([-1, *ends], ends, strict=False)]


def _meta(directory: Path) -> dict:
    return TokenShards(directory, "train").meta


# ---- parsing ------------------------------------------------------------------------------------------


def test_parse_mix_reads_weights_in_order_and_normalises() -> None:
    assert parse_mix("code=0.7,docs=0.3") == {"code": 0.7, "docs": 0.3}
    assert list(parse_mix(" docs = 0.3 , code=0.7 ")) == ["docs", "code"]
    assert parse_mix("a=0.5,b=0.505") == pytest.approx({"a": 0.5 / 1.005, "b": 0.505 / 1.005})
    assert parse_mix("web=1,code=0") == {"web": 1.0, "code": 0.0}  # 0 drops a domain
    assert parse_mix("") == {} and parse_mix("  ") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("code", "--mix: 'code' is not DOMAIN=WEIGHT; write the mix like 'code=0.7,docs=0.3'"),
        ("=1", "--mix: '=1' is not DOMAIN=WEIGHT"),
        ("code=1,", "--mix: '' is not DOMAIN=WEIGHT"),
        ("code=lots", "--mix: the weight of 'code' is 'lots', not a number; write the mix like"),
        ("code=-0.5,docs=1.5", "--mix: the weight of 'code' must be a positive number, or 0 to leave the"),
        ("code=nan", "--mix: the weight of 'code' must be a positive number"),
        ("code=0.5,code=0.5", "--mix gives 'code' two weights; give each domain one"),
        ("code=0.7,docs=0.2", "--mix weights sum to 0.9, not 1; make them add up to 1, like 'code=0.7,docs"),
        ("code=0,docs=0", "--mix weights sum to 0, not 1"),
    ],
)
def test_parse_mix_rejects_with_the_way_out(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_mix(text)
    assert str(error.value).startswith(message)


def test_config_checks_the_mix_before_any_work() -> None:
    with pytest.raises(ConfigError, match="--mix weights sum to 2, not 1"):
        TokenizeConfig(mix="code=1,docs=1")


def test_the_mix_must_weigh_exactly_the_corpus_domains() -> None:
    domains = ["code", "docs", "code"]
    check_domains({"code": 0.5, "docs": 0.5}, domains, {"code", "docs"})
    check_domains({"code": 1.0, "docs": 0.0}, domains, {"code"})  # a dropped domain needs no training doc
    with pytest.raises(ConfigError) as error:
        check_domains({"code": 0.5, "web": 0.5}, domains, domains)
    assert (
        str(error.value) == "--mix names 'web', not a domain of the corpus, whose domains are 'code', 'docs'"
    )
    with pytest.raises(ConfigError) as error:
        check_domains({"code": 1.0}, domains, domains)
    assert str(error.value) == (
        "--mix gives no weight to the corpus's domain(s) 'docs'; give each one, e.g. 'docs=0.1', "
        "or 0 to leave it out of training ('docs=0')"
    )
    with pytest.raises(DataError, match=r"domain\(s\) 'docs' have no document in the training split"):
        check_domains({"code": 0.5, "docs": 0.5}, domains, {"code"})


# ---- factors and their realisation --------------------------------------------------------------------


def test_factors_keep_the_split_size() -> None:
    factors = mix_factors({"code": 0.5, "docs": 0.5}, {"code": 800, "docs": 200})
    assert factors == {"code": 0.625, "docs": 2.5}
    # a dropped domain is not replaced by repeats of the others: T is the kept domains' natural total
    assert mix_factors({"code": 1.0, "docs": 0.0}, {"code": 800, "docs": 200}) == {"code": 1.0, "docs": 0.0}


def test_fractional_factors_are_realised_per_document_by_hash() -> None:
    ids = [f"d{i}" for i in range(200)]
    tokens = np.array([5 + (i * 37) % 50 for i in range(200)])
    for factor in (2.4, 0.3, 1.0, 3.0, 0.0):
        copies = copies_per_document(ids, tokens, factor, seed=0)
        assert set(copies.tolist()) <= {int(factor), int(factor) + 1}
        assert abs((copies * tokens).sum() - factor * tokens.sum()) <= tokens.max() / 2
    assert np.array_equal(copies_per_document(ids, tokens, 1.0, seed=0), np.ones(200))
    extra = copies_per_document(ids, tokens, 2.4, seed=0)
    assert np.array_equal(extra, copies_per_document(ids, tokens, 2.4, seed=0))
    assert not np.array_equal(extra, copies_per_document(ids, tokens, 2.4, seed=1))
    reversed_ = copies_per_document(ids[::-1], tokens[::-1], 2.4, seed=0)[::-1]
    assert np.array_equal(extra, reversed_)  # chosen by id, not by position


def test_copies_are_spread_through_the_split() -> None:
    ids = [f"d{i}" for i in range(60)]
    copies = np.array([i % 4 for i in range(60)])  # 0 to 3 copies
    order = mixed_order(ids, copies, seed=0)
    assert Counter(order.tolist()) == {i: c for i, c in enumerate(copies.tolist()) if c}
    assert all(a != b for a, b in zip(order[:-1], order[1:], strict=True))
    positions = {i: np.flatnonzero(order == i) for i in range(60) if copies[i] == 3}
    gaps = np.concatenate([np.diff(p) for p in positions.values()])
    assert gaps.min() > 1 and gaps.mean() > len(order) / 3 / 2  # copy c sits in the c-th third
    same = mixed_order(ids[::-1], copies[::-1], seed=0)
    assert [ids[::-1][i] for i in same] == [ids[i] for i in order]  # independent of the input order


# ---- the mixed train split ----------------------------------------------------------------------------


def test_mix_hits_the_target_shares(corpus: tuple[Path, Path, Tokenizer], runs: dict[str, Path]) -> None:
    _, _, tokenizer = corpus
    meta = _meta(runs["mixed"])
    mix = meta["mix"]
    assert mix["split"] == "train" and list(mix["domains"]) == ["code", "docs"]
    assert set(mix["domains"]["code"]) == {
        "documents",
        "natural_tokens",
        "natural_share",
        "target_share",
        "factor",
        "documents_written",
        "tokens_written",
        "achieved_share",
    }
    code, docs = mix["domains"]["code"], mix["domains"]["docs"]
    assert code["natural_share"] > 0.7 and code["factor"] < 1 < docs["factor"]
    train = meta["splits"]["train"]
    assert (
        mix["total"]["tokens_written"] == train["tokens"] == code["tokens_written"] + docs["tokens_written"]
    )
    assert mix["total"]["documents_written"] == train["documents"]
    assert (
        mix["total"]["natural_tokens"]
        == mix["total"]["target_tokens"]
        == _meta(runs["plain"])["splits"]["train"]["tokens"]
    )
    # document-granularity rounding: each domain is off its goal by at most half its longest document,
    # so with two halves a share is off by at most (longest code + longest docs) / 4 of the split
    longest = {
        domain: max(len(tokenizer.encode(t)) + 1 for t, d in zip(TEXTS, DOMAINS, strict=True) if d == domain)
        for domain in ("code", "docs")
    }
    tolerance = sum(longest.values()) / (4 * train["tokens"])
    assert tolerance < 0.02
    for name, row in mix["domains"].items():
        assert row["target_share"] == 0.5
        assert abs(row["achieved_share"] - 0.5) <= tolerance
        assert abs(row["tokens_written"] - row["factor"] * row["natural_tokens"]) <= longest[name] / 2
    # every training document is there its number of times, none twice in a row
    by_tokens = {tuple(tokenizer.encode(text)): domain for text, domain in zip(TEXTS, DOMAINS, strict=True)}
    written = _documents(runs["mixed"], "train", tokenizer.eos_id)
    assert Counter(by_tokens[d] for d in written) == {
        "code": code["documents_written"],
        "docs": docs["documents_written"],
    }
    assert max(Counter(written).values()) >= 3  # docs were repeated …
    assert all(a != b for a, b in zip(written[:-1], written[1:], strict=True))  # … but never adjacently
    assert sorted(p.name for p in runs["mixed"].iterdir()) == [
        "meta.json",
        "train-00000.bin",
        "val-00000.bin",
    ]


def test_validation_keeps_the_natural_distribution(runs: dict[str, Path]) -> None:
    plain, mixed = runs["plain"], runs["mixed"]
    assert (plain / "val-00000.bin").read_bytes() == (mixed / "val-00000.bin").read_bytes()
    assert _meta(plain)["splits"]["val"] == _meta(mixed)["splits"]["val"]


def test_mix_is_deterministic_whatever_the_sharding(
    corpus: tuple[Path, Path, Tokenizer], runs: dict[str, Path], tmp_path: Path
) -> None:
    docs, tok, _ = corpus
    tokenize_docs(docs, tok, tmp_path / "again", replace(BASE, mix=MIX))
    for name in ("train-00000.bin", "val-00000.bin"):
        assert (tmp_path / "again" / name).read_bytes() == (runs["mixed"] / name).read_bytes()
    small = tokenize_docs(
        docs, tok, tmp_path / "small", replace(BASE, mix=MIX, docs_per_task=7, shard_tokens=200)
    )
    assert len(small["splits"]["train"]["files"]) > 1 and small["mix"] == _meta(runs["mixed"])["mix"]
    assert np.array_equal(
        np.concatenate(TokenShards(tmp_path / "small", "train").arrays),
        np.concatenate(TokenShards(runs["mixed"], "train").arrays),
    )


def test_a_zero_weight_drops_the_domain(corpus: tuple[Path, Path, Tokenizer], tmp_path: Path) -> None:
    docs, tok, tokenizer = corpus
    meta = tokenize_docs(docs, tok, tmp_path / "out", replace(BASE, mix="code=1,docs=0"))
    code, dropped = meta["mix"]["domains"]["code"], meta["mix"]["domains"]["docs"]
    assert code["factor"] == 1.0 and code["tokens_written"] == code["natural_tokens"]
    assert dropped["factor"] == 0.0 and dropped["tokens_written"] == 0 and dropped["achieved_share"] == 0.0
    code_docs = {tuple(tokenizer.encode(text)) for text in CODE}
    assert set(_documents(tmp_path / "out", "train", tokenizer.eos_id)) <= code_docs


def test_without_mix_the_splits_are_the_documents_in_input_order(
    corpus: tuple[Path, Path, Tokenizer], runs: dict[str, Path]
) -> None:
    """The output without --mix is what it was before --mix existed: documents in input order, each + EOS."""
    docs, _, tokenizer = corpus
    table = pa.concat_tables([pq.read_table(path) for path in sorted(docs.glob("docs-*.parquet"))])
    ids, texts = table.column("id").to_pylist(), table.column("text").to_pylist()
    is_val = choose_val(ids, 0.25, seed=0)
    for split, keep in (("train", ~is_val), ("val", is_val)):
        kept = [text for text, k in zip(texts, keep, strict=True) if k]
        expected = [token for text in kept for token in [*tokenizer.encode(text), tokenizer.eos_id]]
        assert np.concatenate(TokenShards(runs["plain"], split).arrays).tolist() == expected
    assert "mix" not in _meta(runs["plain"])


def test_mix_errors_name_the_flag(corpus: tuple[Path, Path, Tokenizer], tmp_path: Path) -> None:
    docs, tok, _ = corpus
    with pytest.raises(ConfigError, match="--mix names 'web', not a domain of the corpus, whose domains are"):
        tokenize_docs(docs, tok, tmp_path / "out", replace(BASE, mix="code=0.5,web=0.5"))
    bare = tmp_path / "bare"
    bare.mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["x", "y"]}), bare / "docs-00000.parquet")
    with pytest.raises(DataError, match="has no 'domain' column, which --mix needs"):
        tokenize_docs(bare, tok, tmp_path / "out", replace(BASE, mix="code=1"))
    assert not (tmp_path / "out").exists()
