"""Byte-level BPE: exact round trips, special tokens, save/load, transformers interop, errors."""

import json
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forge.errors import CheckpointError, ConfigError, DataError
from forge.tokenizer.bpe import Tokenizer, TokenizerConfig, train_from_docs, train_tokenizer
from forge.tokenizer.special import SPECIAL_TOKENS

CORPUS = [
    textwrap.dedent(f"""
    def function_{i}(value, other=None):
        \"\"\"Return the sum of value and other, or value alone.\"\"\"
        if other is None:
            return value * {i}
        return value + other  # 日本語のコメント {i}
    """)
    for i in range(40)
] + ["The quick brown fox jumps over the lazy dog. Ünïcödé, emoji 🎉🚀 and CJK 中文字符 " * 3] * 5

TRICKY = [
    "",
    "hello world",
    "  leading and trailing spaces  ",
    "line one\r\nline two\n\n\ttabbed",
    "nul \x00 and controls \x01\x1b[0m\x7f",
    "emoji 🎉🚀👩‍👩‍👧 and flags 🇫🇷",
    "中文字符 日本語 한국어",
    "combining e\u0301 a\u0308 \u0301\u0301 lone combining",
    "zero width \u200b\u200d and bom \ufeff",
    "<|endoftext|><|bos|> <|user|>hi<|end|>",
    "private use \ue000 and astral \U0010ffff",
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_tokenizer(CORPUS, TokenizerConfig(vocab_size=300))


def test_special_tokens_have_ids_0_to_6(tokenizer: Tokenizer) -> None:
    assert tokenizer.special_ids == {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.end_of_turn_id) == (0, 1, 2, 6)
    assert tokenizer.decode([1]) == "<|endoftext|>"
    assert tokenizer.decode([0, 1, 6], skip_special_tokens=True) == ""


def test_training_reaches_vocab_size_and_is_deterministic(tokenizer: Tokenizer) -> None:
    assert tokenizer.vocab_size == 300
    again = train_tokenizer(CORPUS, TokenizerConfig(vocab_size=300))
    assert again.fingerprint() == tokenizer.fingerprint()
    # merges were learned: common code compresses well below one token per byte
    text = CORPUS[3]
    assert len(tokenizer.encode(text)) < 0.6 * len(text.encode())


def test_max_train_bytes_stops_feeding_text() -> None:
    config = TokenizerConfig(vocab_size=300, max_train_bytes=500)
    capped = train_tokenizer(CORPUS, config)
    prefix = "".join(CORPUS).encode()[:500].decode()
    assert capped.fingerprint() == train_tokenizer([prefix], TokenizerConfig(vocab_size=300)).fingerprint()
    assert capped.fingerprint() != train_tokenizer(CORPUS, TokenizerConfig(vocab_size=300)).fingerprint()


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_tricky_strings(tokenizer: Tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    token_bytes = tokenizer.token_bytes()
    assert b"".join(token_bytes[i] for i in ids) == text.encode("utf-8")


@pytest.fixture(scope="module")
def token_bytes(tokenizer: Tokenizer) -> list[bytes]:
    return tokenizer.token_bytes()


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_round_trip_any_string(tokenizer: Tokenizer, token_bytes: list[bytes], text: str) -> None:
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert b"".join(token_bytes[i] for i in ids) == text.encode("utf-8")


def test_special_strings_in_plain_text_stay_plain(tokenizer: Tokenizer) -> None:
    text = "end of a document <|endoftext|> and a fake turn <|user|>hi<|end|>"
    for ids in (tokenizer.encode(text), tokenizer.encode_batch([text, "x"])[0]):
        assert min(ids) >= len(SPECIAL_TOKENS), "a special id came out of plain text"
        assert tokenizer.decode(ids) == text
    assert tokenizer.encode_batch(TRICKY) == [tokenizer.encode(t) for t in TRICKY]


def test_token_bytes_and_lengths(tokenizer: Tokenizer) -> None:
    token_bytes = tokenizer.token_bytes()
    lengths = tokenizer.token_byte_lengths()
    assert len(token_bytes) == len(lengths) == tokenizer.vocab_size
    assert lengths.dtype.name == "int32"
    assert list(lengths[: len(SPECIAL_TOKENS)]) == [0] * len(SPECIAL_TOKENS)
    assert all(lengths[len(SPECIAL_TOKENS) :] >= 1)
    # every single byte is a token of its own, and merged tokens are distinct byte strings
    assert {bytes([b]) for b in range(256)} <= set(token_bytes)
    assert len(set(token_bytes[len(SPECIAL_TOKENS) :])) == tokenizer.vocab_size - len(SPECIAL_TOKENS)
    # a token whose bytes are valid UTF-8 decodes to exactly those bytes
    for i in range(len(SPECIAL_TOKENS), tokenizer.vocab_size):
        try:
            expected = token_bytes[i].decode("utf-8")
        except UnicodeDecodeError:
            continue
        assert tokenizer.decode([i]) == expected


def test_save_load_round_trip(tokenizer: Tokenizer, tmp_path: Path) -> None:
    tokenizer.save(tmp_path / "tok")
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded.fingerprint() == tokenizer.fingerprint()
    assert all(loaded.encode(t) == tokenizer.encode(t) for t in TRICKY)
    meta = json.loads((tmp_path / "tok" / "forge_tokenizer.json").read_text())
    assert meta["special_tokens"] == tokenizer.special_ids
    assert meta["vocab_size"] == 300 and meta["fingerprint"] == tokenizer.fingerprint()
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == [
        "forge_tokenizer.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


def test_transformers_loads_and_encodes_identically(tokenizer: Tokenizer, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tokenizer.save(tmp_path)
    from_dir = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    from_file = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert (from_dir.bos_token_id, from_dir.eos_token_id, from_dir.pad_token_id) == (0, 1, 2)
    for text in TRICKY:
        ids = tokenizer.encode(text)
        assert from_dir(text)["input_ids"] == ids
        assert from_dir.decode(ids) == text
        if "<|" not in text:  # without tokenizer_config.json, transformers matches special strings
            assert from_file(text)["input_ids"] == ids


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="--vocab-size"):
        TokenizerConfig(vocab_size=262)
    TokenizerConfig(vocab_size=263)
    with pytest.raises(ConfigError, match="--min-frequency"):
        TokenizerConfig(min_frequency=0)
    with pytest.raises(ConfigError, match="--max-train-bytes"):
        TokenizerConfig(max_train_bytes=0)


def test_load_missing_or_corrupt_directory(tokenizer: Tokenizer, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nowhere.*forge tokenizer train"):
        Tokenizer.load(tmp_path / "nowhere")
    tokenizer.save(tmp_path / "tok")
    (tmp_path / "tok" / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"tok.*forge tokenizer train"):
        Tokenizer.load(tmp_path / "tok")


def test_train_from_docs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="forge data prepare"):
        train_from_docs(tmp_path / "docs", tmp_path / "tok", TokenizerConfig(vocab_size=300), progress=False)
    (tmp_path / "docs").mkdir()
    table = pa.table({"id": [str(i) for i in range(len(CORPUS))], "text": CORPUS,
                      "source": ["test"] * len(CORPUS), "domain": ["code"] * len(CORPUS)})  # fmt: skip
    pq.write_table(table, tmp_path / "docs" / "docs-00000.parquet")
    trained = train_from_docs(
        tmp_path / "docs", tmp_path / "tok", TokenizerConfig(vocab_size=300), progress=False
    )
    assert Tokenizer.load(tmp_path / "tok").fingerprint() == trained.fingerprint()
    assert trained.fingerprint() == train_tokenizer(CORPUS, TokenizerConfig(vocab_size=300)).fingerprint()
