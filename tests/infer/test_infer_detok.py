"""Streaming detokenisation: pieces concatenate to the text, characters split across tokens come out whole."""

from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from forge.infer.detok import StreamDecoder
from forge.tokenizer.bpe import Tokenizer, TokenizerConfig, train_tokenizer

TRAINING_TEXTS = [
    "hello world, the quick brown fox jumps over the lazy dog",
    "日本語のテキストと中文文本 🙂🚀👩‍👩‍👧 emoji and CJK mixed: 東京 🙂 北京",
    "naïve café – déjà vu — “quotes” ½ ∑ ∞",
] * 20


@cache
def _tokenizer() -> Tokenizer:
    return train_tokenizer(TRAINING_TEXTS, TokenizerConfig(vocab_size=300, min_frequency=1))


def _stream(decoder: StreamDecoder, ids: list[int]) -> list[str]:
    pieces = [decoder.push(i) for i in ids]
    return [*pieces, decoder.flush()]


@st.composite
def _split_bytes(draw: st.DrawFn) -> tuple[str, list[bytes]]:
    """A random string and its UTF-8 bytes cut at random places (often inside a character)."""
    text = draw(st.text(max_size=40))
    data = text.encode("utf-8")
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=len(data))))
    bounds = [0, *[c for c in cuts if c < len(data)], len(data)]
    return text, [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=200, deadline=None)
@given(_split_bytes())
def test_random_byte_splits_give_back_the_text(case: tuple[str, list[bytes]]) -> None:
    text, chunks = case
    pieces = _stream(StreamDecoder(chunks), list(range(len(chunks))))
    assert "".join(pieces) == text
    for piece in pieces:
        assert piece.count("\ufffd") == 0 or "\ufffd" in text  # no half characters, ever


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=30))
def test_bpe_tokens_stream_back_to_the_text(text: str) -> None:
    tokenizer = _tokenizer()
    pieces = _stream(StreamDecoder(tokenizer.token_bytes()), tokenizer.encode(text))
    assert "".join(pieces) == text


def test_bpe_splits_characters_and_the_stream_emits_them_once_whole() -> None:
    tokenizer = _tokenizer()
    token_bytes = tokenizer.token_bytes()
    text = "語🚀x"
    ids = tokenizer.encode(text)
    assert len(ids) > 3, "the test needs characters spread over several tokens"
    pieces = [p for p in _stream(StreamDecoder(token_bytes), ids) if p]
    assert pieces == ["語", "🚀", "x"]


def test_special_tokens_print_nothing() -> None:
    tokenizer = _tokenizer()
    decoder = StreamDecoder(tokenizer.token_bytes())
    assert decoder.push(tokenizer.eos_id) == ""
    assert "".join(decoder.push(i) for i in tokenizer.encode("ok")) == "ok"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=4), max_size=12))
def test_any_bytes_stream_like_a_one_shot_decode(chunks: list[bytes]) -> None:
    # model output need not be UTF-8: the stream never raises and agrees with decoding everything at once
    pieces = _stream(StreamDecoder(chunks), list(range(len(chunks))))
    assert "".join(pieces) == b"".join(chunks).decode("utf-8", errors="replace")


def test_a_character_cut_short_at_the_end_is_flushed_as_one_replacement() -> None:
    decoder = StreamDecoder([b"a", "€".encode()[:2]])
    assert decoder.push(0) == "a"
    assert decoder.push(1) == ""
    assert decoder.flush() == "\ufffd"
    assert decoder.push(0) == "a", "flush resets the decoder"
