"""The language filter keeps the languages asked for and names what it drops."""

import sys

import pytest

from forge.data.langid import REASONS, LanguageConfig, LanguageFilter
from forge.errors import ConfigError

ENGLISH = (
    "The library opens every day except Sunday. Readers may borrow up to five books for three weeks "
    "and read the newspapers in the reading room."
)
GERMAN = (
    "Die Stadt liegt am Ufer eines großen Sees und ist von Wäldern umgeben. Im Sommer kommen viele "
    "Besucher, um zu wandern, zu schwimmen und die alte Burg auf dem Hügel zu besichtigen."
)
FRENCH = (
    "La bibliothèque municipale ouvre ses portes tous les jours sauf le dimanche. Les lecteurs peuvent "
    "emprunter jusqu'à cinq livres pendant trois semaines et consulter les journaux sur place."
)


@pytest.fixture(scope="module")
def english() -> LanguageFilter:
    pytest.importorskip("py3langid")
    return LanguageFilter(LanguageConfig(languages=("en",)))  # loads the model once for the module


def test_keeps_english(english: LanguageFilter) -> None:
    assert english.problem(ENGLISH) is None
    assert english.identify(ENGLISH)[0] == "en"


@pytest.mark.parametrize(("text", "language"), [(GERMAN, "de"), (FRENCH, "fr")])
def test_drops_other_languages(english: LanguageFilter, text: str, language: str) -> None:
    assert english.problem(text) == ("wrong_language", f"{language} (1.00), wanted en")
    assert set(REASONS) == {"wrong_language", "language_uncertain"}


def test_keeps_every_language_asked_for(english: LanguageFilter) -> None:
    both = LanguageFilter(LanguageConfig(languages=("en", "fr")))
    assert both.problem(FRENCH) is None
    assert both.problem(GERMAN) == ("wrong_language", "de (1.00), wanted en,fr")


def test_text_without_language_is_uncertain(english: LanguageFilter) -> None:
    reason, detail = english.problem("12345 67890 0.5 = 3 * 7") or ("", "")
    assert reason == "language_uncertain"
    assert detail.endswith("below --language.min-confidence 0.5")


def test_classifies_only_the_start(english: LanguageFilter) -> None:
    text = ENGLISH + " " + GERMAN * 20
    head = LanguageFilter(LanguageConfig(languages=("en",), max_chars=len(ENGLISH)))
    assert head.problem(text) is None
    assert english.problem(text) == ("wrong_language", "de (1.00), wanted en")


def test_no_languages_means_no_filter_and_no_model() -> None:
    keep_all = LanguageFilter(LanguageConfig())
    assert keep_all.problem(GERMAN) is None
    assert keep_all._model is None


def test_missing_py3langid_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "py3langid", None)
    monkeypatch.setitem(sys.modules, "py3langid.langid", None)
    with pytest.raises(ConfigError, match=r"pip install 'forge\[langid\]'"):
        LanguageFilter(LanguageConfig(languages=("en",)))
    assert LanguageFilter(LanguageConfig()).problem(GERMAN) is None  # not needed without languages


def test_unknown_language_lists_the_known_ones(english: LanguageFilter) -> None:
    with pytest.raises(ConfigError, match="does not know qq; known: .*en"):
        LanguageFilter(LanguageConfig(languages=("en", "qq")))


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"languages": ("English",)}, "--language.languages"),
        ({"languages": ("EN",)}, "--language.languages"),
        ({"min_confidence": 1.5}, "--language.min-confidence"),
        ({"max_chars": 0}, "--language.max-chars"),
    ],
)
def test_invalid_config_names_the_flag(kwargs: dict[str, object], flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        LanguageConfig(**kwargs)  # type: ignore[arg-type]
