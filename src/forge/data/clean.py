"""Cleaning: decode, reject corrupted samples, normalise, bound lengths.

Each check returns the name of the reason a document is removed (or None to keep it), so that the
report counts every removal under one name:

| reason          | rule                                                                                |
|-----------------|-------------------------------------------------------------------------------------|
| `undecodable`   | the bytes are not UTF-8 (a UTF-8 byte-order mark is allowed and dropped)             |
| `binary`        | a NUL character, or more than `max_control_fraction` of other control characters    |
| `too_short`     | fewer than `min_chars` characters after normalisation                               |
| `too_long`      | more than `max_chars` characters after normalisation                                |

Normalisation, in order: Unicode NFC (composed characters, so "é" is one code point however it was
typed), line endings to "\\n", trailing whitespace stripped from every line, blank lines at the start and
end removed. Tabs, indentation and inner blank lines are kept: they carry meaning in code.
"""

import re
import unicodedata

# Unicode category Cc less the ones ordinary in text (\t \n \v \f \r)
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")


def decode(data: bytes | str) -> tuple[str | None, str | None]:
    """(text, None) for UTF-8 bytes or a str, (None, "undecodable") otherwise."""
    if isinstance(data, str):
        return data, None
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError:
        return None, "undecodable"


def corruption(text: str, *, max_control_fraction: float) -> str | None:
    """ "binary" if `text` holds a NUL or too many control characters, else None."""
    if "\x00" in text:
        return "binary"
    if not text:
        return None
    control = len(_CONTROL.findall(text))
    return "binary" if control > max_control_fraction * len(text) else None


def normalize(text: str) -> str:
    """NFC, "\\n" line endings, no trailing whitespace on any line, no blank lines at either end."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip() for line in text.split("\n")]
    return "\n".join(lines).strip("\n")


def length_problem(text: str, *, min_chars: int, max_chars: int) -> str | None:
    """ "too_short" / "too_long" when `text` is outside [min_chars, max_chars] (max_chars 0 = no limit)."""
    if len(text) < min_chars:
        return "too_short"
    if max_chars and len(text) > max_chars:
        return "too_long"
    return None
