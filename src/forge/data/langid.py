"""Language identification: keep prose in the languages asked for.

The model is py3langid, a maintained fork of langid.py (Lui & Baldwin 2012): naive Bayes over byte
n-grams, about 140 languages, its model (4.6 MB) shipped inside the wheel, so nothing is downloaded at run
time. It is an optional dependency (`pip install 'forge[langid]'`), needed only when
`--language.languages` is set.

Prose only: code is keywords, identifiers and numbers, which the model reads as noise, so the pipeline
calls this filter only for documents that are not code.

| reason               | rule                                                                      |
|----------------------|---------------------------------------------------------------------------|
| `wrong_language`     | the most likely language is not one of `languages`                        |
| `language_uncertain` | the most likely language has a probability below `min_confidence`        |

The confidence is py3langid's normalised probability of the top language (a softmax over the languages,
tempered by the square root of the length so that it means the same on short and long texts). Prose
paragraphs score above 0.9, even a single short sentence; text with no language in it (numbers, code,
markup) scores below 0.1: the default threshold of 0.5 sits in that gap. (FineWeb keeps English at 0.65
with fastText's lid.176, whose scores are calibrated differently.) Only the first `max_chars` characters
are classified: the model walks the text byte by byte in Python, and 2,000 characters decide the language
of a document as well as all of it (the standard library's help topics: 79 of 79 English, lowest
confidence 0.94, at 2,000 characters and at 4,000).
"""

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from forge.errors import ConfigError

REASONS = {
    "wrong_language": "written in a language not in --language.languages",
    "language_uncertain": "no language reaches --language.min-confidence",
}
_CODE = re.compile(r"[a-z]{2,3}")


@dataclass(frozen=True, kw_only=True)
class LanguageConfig:
    """Options of the language filter."""

    languages: tuple[str, ...] = ()
    """keep only documents in these ISO 639-1 languages, e.g. 'en,fr' (empty: no language filter)"""
    min_confidence: float = 0.5
    """drop documents whose most likely language has a lower probability than this (0-1)"""
    max_chars: int = 2000
    """classify only the first this many characters of a document (speed; the start decides)"""

    def __post_init__(self) -> None:
        bad = [code for code in self.languages if not _CODE.fullmatch(code)]
        if bad:
            raise ConfigError(
                f"--language.languages must be lowercase ISO 639-1 codes such as 'en,fr', "
                f"got {', '.join(bad)}"
            )
        if not 0 <= self.min_confidence <= 1:
            raise ConfigError(f"--language.min-confidence must be between 0 and 1, got {self.min_confidence}")
        if self.max_chars < 1:
            raise ConfigError(f"--language.max-chars must be at least 1, got {self.max_chars}")


@cache
def _identifier() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


class LanguageFilter:
    """Decides, per document, whether it is in one of the configured languages."""

    def __init__(self, config: LanguageConfig) -> None:
        self.config = config
        self._model: Any = None
        if not config.languages:
            return
        try:
            import py3langid.langid  # noqa: F401
        except ImportError:
            raise ConfigError(
                "--language.languages needs the py3langid package, which is not installed: "
                "pip install 'forge[langid]' (or pip install py3langid), or leave --language.languages empty"
            ) from None
        self._model = _identifier()
        unknown = sorted(set(config.languages) - set(self._model.labels))
        if unknown:
            raise ConfigError(
                f"--language.languages: the language model does not know {', '.join(unknown)}; "
                f"known: {', '.join(sorted(self._model.labels))}"
            )

    def identify(self, text: str) -> tuple[str, float]:
        """(most likely language, its probability) for the start of `text`."""
        if self._model is None:
            self._model = _identifier()
        language, confidence = self._model.classify(text[: self.config.max_chars])
        return language, float(confidence)

    def problem(self, text: str) -> tuple[str, str] | None:
        """("wrong_language" | "language_uncertain", detail), or None to keep (always, without languages)."""
        if not self.config.languages:
            return None
        language, confidence = self.identify(text)
        if confidence < self.config.min_confidence:
            return (
                "language_uncertain",
                f"{language} ({confidence:.2f}) below --language.min-confidence {self.config.min_confidence}",
            )
        if language not in self.config.languages:
            return (
                "wrong_language",
                f"{language} ({confidence:.2f}), wanted {','.join(self.config.languages)}",
            )
        return None
