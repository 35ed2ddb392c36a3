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
- stop strings (planned) belong here: they must be matched on text, across token boundaries.
"""

import codecs


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
