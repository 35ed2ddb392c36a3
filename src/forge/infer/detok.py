"""Streaming detokenisation: token ids in, text out as soon as it is complete.

Design choices:
- a byte-level BPE token is a run of bytes, not of characters: an emoji or a CJK character can span two
  or three tokens, so decoding token by token would print U+FFFD halves. `StreamDecoder` feeds each
  token's bytes to an incremental UTF-8 decoder, which holds back an incomplete character until its last
  byte arrives and then emits it once, whole;
- errors="replace", not "strict": a model can emit bytes that are not UTF-8 (a stray continuation byte);
  the stream must not crash on them, so each invalid sequence becomes one U+FFFD, exactly what
  `bytes.decode("utf-8", errors="replace")` of the whole output would give. Valid text never yields one;
- special tokens stand for no bytes (b"") and print nothing; the engine stops on them instead;
- stop strings are matched on text, not on tokens: a stop can span several tokens and a token can hold
  a stop plus more text. `StopStrings` sits after `StreamDecoder` and holds back any tail of the text
  that is a proper prefix of a stop string (it may still become one), so nothing is emitted twice or
  taken back, and it keeps less than the longest stop string: per-piece work is bounded by the piece and
  the stop strings, never the whole history;
- the output is cut where the first stop occurrence *starts*, whichever way the text was split into
  pieces: a stop completed behind an earlier, still-possible one waits for that one to be decided. Of
  stops starting at the same place the shortest is `matched`: it completes first, so the stream can stop
  at once and the choice does not depend on the split (the cut is the same either way).
"""

import codecs
from collections.abc import Sequence

MAX_STOP_STRINGS = 4


class StreamDecoder:
    """Turns a stream of token ids into text pieces; the pieces concatenate to the decoded text."""

    def __init__(self, token_bytes: list[bytes], *, skip_prefix: bytes = b"") -> None:
        self._token_bytes = token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._skip = skip_prefix  # bytes the caller already has (token healing): dropped from the stream

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (often "", when a character is still partial)."""
        data = self._token_bytes[token_id]
        if self._skip:
            if not data.startswith(self._skip):
                raise ValueError(f"token {token_id} does not start with the healed bytes {self._skip!r}")
            data, self._skip = data[len(self._skip) :], b""
        return self._decoder.decode(data)

    def flush(self) -> str:
        """End of stream: return what is left (U+FFFD for a character cut short) and reset."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text


class StopStrings:
    """Cuts a stream of text pieces before the first stop string; emits text once no stop can start in it.

    After each `push` (or `flush`), `stopped` says whether a stop string was found and `matched` which one;
    `flush` can still find one that waited behind an earlier, longer candidate.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        if isinstance(stops, str):
            raise TypeError("pass a sequence of stop strings, not one string")
        if not 1 <= len(stops) <= MAX_STOP_STRINGS or not all(stops):
            raise ValueError(f"expected 1 to {MAX_STOP_STRINGS} non-empty stop strings, got {list(stops)!r}")
        self._stops = sorted(set(stops), key=len)  # shortest first: it wins a tie at one position
        self._longest = len(self._stops[-1])
        self._held = ""  # not yet emitted: starts where a stop string may begin (shorter than the longest)
        self.stopped = False
        self.matched: str | None = None

    def push(self, text: str) -> str:
        """Add the next piece of text; return what is now safe to emit ("" once stopped)."""
        if self.stopped:
            return ""
        text = self._held + text
        start, stop = self._first_stop(text)
        open_at = self._first_open(text)
        if stop is not None and start <= open_at:  # nothing earlier can still become a stop
            self.stopped, self.matched, self._held = True, stop, ""
            return text[:start]
        self._held = text[open_at:]
        return text[:open_at]

    def flush(self) -> str:
        """End of stream: return the held-back text, cut before a stop string it already holds."""
        text, self._held = self._held, ""
        start, stop = self._first_stop(text)
        if stop is not None:
            self.stopped, self.matched = True, stop
        return text[:start]

    def finish(self, text: str) -> str:
        """The stream's last piece: `push` it, then `flush` unless a stop string was reached."""
        text = self.push(text)
        return text if self.stopped else text + self.flush()

    def _first_stop(self, text: str) -> tuple[int, str | None]:
        """Start of the earliest complete stop string in text, and which (the shortest on a tie)."""
        best = len(text)
        matched: str | None = None
        for stop in self._stops:
            i = text.find(stop, 0, best - 1 + len(stop))  # only occurrences starting before the best
            if i != -1:
                best, matched = i, stop
        return best, matched

    def _first_open(self, text: str) -> int:
        """Earliest i where text[i:] is a proper prefix of a stop string (may complete), else len(text)."""
        for i in range(max(0, len(text) - self._longest + 1), len(text)):
            tail = text[i:]
            if any(len(stop) > len(tail) and stop.startswith(tail) for stop in self._stops):
                return i
        return len(text)
