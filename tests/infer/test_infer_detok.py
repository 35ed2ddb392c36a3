"""Streaming detokenisation: pieces concatenate to the text, characters split across tokens come out whole,
and stop strings cut the text where they first start, however it was split."""

from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forge.infer.detok import StopStrings, StreamDecoder
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


# --- stop strings ---

ALPHABET = "ab<|🙂語é "  # few characters, so that stops overlap and recur; multibyte ones among them


def _cut_at_first_stop(text: str, stops: list[str]) -> tuple[str, str | None]:
    """Reference: the text before the earliest-starting stop, and the shortest stop starting there."""
    starts = [text.find(stop) for stop in stops if stop in text]
    if not starts:
        return text, None
    start = min(starts)
    return text[:start], min((stop for stop in stops if text.startswith(stop, start)), key=len)


def _stop_stream(stops: StopStrings, pieces: list[str]) -> list[str]:
    return [*(stops.push(piece) for piece in pieces), stops.flush()]


@st.composite
def _stop_case(draw: st.DrawFn) -> tuple[str, list[str], list[str]]:
    """A text, 1 to 4 stop strings (often substrings of it), and the text cut into pieces (some empty)."""
    text = draw(st.text(alphabet=ALPHABET, max_size=30))
    random_stop = st.text(alphabet=ALPHABET, min_size=1, max_size=4)
    if text:
        substring = st.tuples(st.integers(0, len(text) - 1), st.integers(1, 6)).map(
            lambda ij: text[ij[0] : ij[0] + ij[1]]
        )
        random_stop = st.one_of(substring, random_stop)
    stops = draw(st.lists(random_stop, min_size=1, max_size=4))
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=len(text) + 2)))
    bounds = [0, *cuts, len(text)]
    return text, stops, [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=300, deadline=None)
@given(_stop_case())
def test_stop_strings_cut_at_the_first_stop_however_the_text_is_split(
    case: tuple[str, list[str], list[str]],
) -> None:
    text, stop_list, pieces = case
    stops = StopStrings(stop_list)
    longest = max(map(len, stop_list))
    emitted, seen = [], ""
    for piece in pieces:
        emitted.append(stops.push(piece))
        seen += piece
        if not stops.stopped:  # holds back less than the longest stop string
            assert len("".join(emitted)) > len(seen) - longest
    emitted.append(stops.flush())
    expected, matched = _cut_at_first_stop(text, stop_list)
    assert "".join(emitted) == expected
    assert (stops.stopped, stops.matched) == (matched is not None, matched)
    assert not any(stop in "".join(emitted) for stop in stop_list)


def test_a_stop_split_over_three_pieces() -> None:
    stops = StopStrings(["<|end|>"])
    assert stops.push("Hello <") == "Hello "
    assert stops.push("|en") == ""
    assert stops.push("d|> and more") == ""
    assert (stops.stopped, stops.matched) == (True, "<|end|>")
    assert stops.push("later") == ""
    assert stops.flush() == ""


def test_a_false_start_is_released_once_it_cannot_be_a_stop() -> None:
    stops = StopStrings(["<|end|>"])
    assert stops.push("a<|") == "a"
    assert stops.push("x") == "<|x"
    assert stops.push("<|en") == ""
    assert stops.flush() == "<|en", "the end of the stream releases what was held back"
    assert not stops.stopped


def test_a_stop_at_the_very_beginning_emits_nothing() -> None:
    stops = StopStrings(["STOP"])
    assert _stop_stream(stops, ["STOP and more"]) == ["", ""]
    assert stops.matched == "STOP"


def test_the_stop_that_starts_first_wins() -> None:
    assert _stop_stream(StopStrings(["world", "lo w"]), ["hello world"]) == ["hel", ""]
    stops = StopStrings(["world", "lo w"])
    assert "".join(_stop_stream(stops, list("hello world"))) == "hel"
    assert stops.matched == "lo w"


def test_a_completed_stop_waits_for_an_earlier_one_still_possible() -> None:
    stops = StopStrings(["he", "the end"])
    assert stops.push("the") == "", '"he" is complete, but "the end" may start before it'
    assert stops.push(" end") == ""
    assert stops.matched == "the end"

    stops = StopStrings(["he", "the end"])
    assert stops.push("the") == ""
    assert stops.push(" cat") == "t", '"the end" is ruled out: cut before "he"'
    assert stops.matched == "he"


def test_of_stops_starting_together_the_shortest_is_matched_at_once() -> None:
    stops = StopStrings(["abc", "ab"])
    assert stops.push("xab") == "x"
    assert (stops.stopped, stops.matched) == (True, "ab")


def test_flush_cuts_at_a_stop_that_was_waiting() -> None:
    stops = StopStrings(["abcdef", "cd"])
    assert stops.push("abcd") == ""
    assert stops.flush() == "ab"
    assert (stops.stopped, stops.matched) == (True, "cd")


@pytest.mark.parametrize("bad", [[], ["a", "b", "c", "d", "e"], ["ok", ""]])
def test_stop_strings_need_one_to_four_non_empty_strings(bad: list[str]) -> None:
    with pytest.raises(ValueError, match="stop strings"):
        StopStrings(bad)


def _generate(tokenizer: Tokenizer, text: str, stop_list: list[str]) -> tuple[str, StopStrings, int]:
    """Stream the text's tokens through both stages as an engine would; returns text, stopper, tokens used."""
    decoder, stops = StreamDecoder(tokenizer.token_bytes()), StopStrings(stop_list)
    out, used = "", 0
    for token_id in tokenizer.encode(text):
        out += stops.push(decoder.push(token_id))
        used += 1
        if stops.stopped:
            return out, stops, used
    out += stops.push(decoder.flush())
    return out + stops.flush(), stops, used


@pytest.mark.parametrize(
    ("text", "stop"),
    [
        ("hello world 🙂 the quick fox", "🙂 the"),
        ("東京 and 北京 again", "北京"),
        ("the quick brown fox", "k b"),
    ],
)
def test_bpe_tokens_through_both_stages_stop_at_the_stop_string(text: str, stop: str) -> None:
    tokenizer = _tokenizer()
    out, stops, used = _generate(tokenizer, text, [stop])
    assert out == text[: text.index(stop)]
    assert stops.matched == stop
    assert used < len(tokenizer.encode(text)), "the engine can stop before the text runs out"


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet="ab 🙂語東京é", max_size=20), st.data())
def test_bpe_streams_with_stops_match_the_reference_cut(text: str, data: st.DataObject) -> None:
    stop_list = data.draw(
        st.lists(st.text(alphabet="ab 🙂語東京é", min_size=1, max_size=3), min_size=1, max_size=4)
    )
    out, stops, _ = _generate(_tokenizer(), text, stop_list)
    assert (out, stops.matched) == _cut_at_first_stop(text, stop_list)
