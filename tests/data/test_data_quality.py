"""Quality rules, each against a document that fails it and one that passes; the C4 line filter; is_code."""

import re
from typing import Any

import pytest

from forge.data.quality import REASONS, QualityConfig, filter_lines, is_code, quality_problem
from forge.errors import ConfigError

PROSE = """\
The history of the printing press is a story of many small improvements rather than a single invention.
Early printers in Europe borrowed ideas from wine presses, metal casting and the making of paper.
Johannes Gutenberg combined these techniques with an oil-based ink that stuck to metal type.

His workshop in Mainz produced books faster and more cheaply than any team of scribes could manage.
Within fifty years, presses were running in more than two hundred cities across the continent.
Scholars could now compare identical copies of a text, which changed how knowledge was shared and checked.

Historians still debate how quickly ordinary readers benefited from the new technology.
Books remained expensive for decades, and many people learned to read only in the following centuries."""
LINES = [line for line in PROSE.split("\n") if line]
FIRST_PARAGRAPH = PROSE.split("\n\n")[0]
LONG_LINE = (
    "During the long winter of that year the river froze solid from bank to bank, so merchants who "
    "normally shipped grain by barge hauled their sacks across the ice on sledges pulled by horses, "
    "while children skated between the wooden piers, fishermen cut holes to drop their lines, and the "
    "town council argued for weeks about whether to hold the annual fair on the frozen water itself, "
    "a plan that was finally approved after an engineer measured the thickness of the ice in twelve places."
)
SHARE = "Share this article with your friends."
NO_STOP_WORDS = (
    "Bright morning sunlight warms quiet village streets. Farmers carry heavy baskets toward busy markets. "
    "Children run past old stone houses, laughing loudly. Merchants display fresh bread, ripe apples, "
    "golden honey, plus colourful fabrics. Travellers stop briefly, buying small gifts for distant "
    "friends. Church bells ring twice before noon. Later, clouds gather above green hills, rain begins "
    "falling softly, so everyone hurries home again."
)
TOP_BIGRAM = "\n".join(
    [
        "The printing press changed how news travelled across Europe.",
        "Every printing press needed skilled workers and a steady supply of paper.",
        "A wooden printing press could produce several hundred sheets in one day.",
        "Owners of a printing press often printed pamphlets for local merchants.",
        "The first printing press in England was set up near Westminster Abbey.",
        "Censors watched each printing press closely during times of unrest.",
        "Later models of the printing press used iron frames instead of wood.",
        "Steam power made the printing press far faster in the nineteenth century.",
    ]
)
RECORDS = "according to the detailed records kept by the local parish clerk"
REPEATED_PHRASE = "\n".join(
    [PROSE]
    + [f"{start} {RECORDS}." for start in ("Births rose sharply", "Winters were harsh", "Wages fell")]
    + [f"{start} {RECORDS}." for start in ("Plague returned twice", "Few marriages took place")]
)
FEW_SENTENCES = (
    "The museum opened its new wing in the spring, and visitors came from all over the region to see "
    "the collection of early maps, globes and navigation instruments that had been stored in the basement "
    "for decades. Curators spent two years cleaning, cataloguing and restoring the objects before they "
    "could be shown to the public, and many of the maps had never been displayed before, while some of "
    "them still carry the notes of the sailors who used them."
)

FUNCTION = '''\
def mean(values: list[float]) -> float:
    """The arithmetic mean of `values`; raises ValueError when there are none."""
    if not values:
        raise ValueError("mean of an empty list")
    total = 0.0
    for value in values:
        total += value
    return total / len(values)'''
ASCII_ART = "\n".join(
    ["# " + "=" * 40, "# +---+---+---+", "# | x | y | z |", "# +---+---+---+", "# " + "-" * 40]
)

# (reason, a document failing that rule and no earlier one, a document passing every rule, config overrides)
CASES = [
    ("gopher_few_words", " ".join(PROSE.split()[:30]), PROSE, {}),
    ("gopher_many_words", PROSE + "\n\n" + LONG_LINE, PROSE, {"max_words": 160}),
    ("gopher_short_words", " ".join(["It is a cat on a mat."] * 8), PROSE, {}),
    (
        "gopher_long_words",
        " ".join(
            ["Internationalization notwithstanding, telecommunications modernization necessitates"] * 13
        ),
        PROSE,
        {},
    ),
    ("gopher_symbols", PROSE + "\n" + " ".join(f"#topic{i}" for i in range(20)), PROSE + " #history", {}),
    (
        "gopher_bullet_lines",
        "\n".join(f"• {line}" for line in LINES),
        "\n".join(LINES[:2] + [f"- {line}" for line in LINES[2:]]),
        {},
    ),
    (
        "gopher_ellipsis_lines",
        "\n".join(line[:-1] + "..." for line in LINES),
        "\n".join([line[:-1] + "…" for line in LINES[:2]] + LINES[2:]),
        {},
    ),
    (
        "gopher_non_alpha_words",
        PROSE + "\n" + " ".join(str(1900 + i) for i in range(45)),
        PROSE + "\n" + " ".join(str(1900 + i) for i in range(10)),
        {},
    ),
    ("gopher_stop_words", NO_STOP_WORDS, PROSE, {}),
    ("gopher_duplicate_lines", PROSE + "\n" + "\n".join([SHARE] * 6), PROSE + "\n" + SHARE, {}),
    (
        "gopher_duplicate_paragraphs",
        "\n\n".join([PROSE, SHARE, SHARE, SHARE]),
        "\n\n".join([PROSE, SHARE]),
        {},
    ),
    ("gopher_duplicate_line_chars", "\n".join([PROSE, LONG_LINE, LONG_LINE]), PROSE + "\n" + LONG_LINE, {}),
    (
        "gopher_duplicate_paragraph_chars",
        "\n\n".join([PROSE, LONG_LINE, LONG_LINE]),
        "\n\n".join([PROSE, LONG_LINE]),
        {"max_duplicate_line_char_fraction": 1.0},  # repeated paragraphs are repeated lines too
    ),
    ("gopher_top_ngram", TOP_BIGRAM, PROSE, {}),
    ("gopher_duplicate_ngrams", REPEATED_PHRASE, PROSE, {}),
    ("c4_lorem_ipsum", PROSE + "\n\nLorem ipsum dolor sit amet, consectetur adipiscing elit.", PROSE, {}),
    (
        "c4_curly_bracket",
        PROSE + "\n\nThe dict {'a': 1} maps a key to a value.",
        PROSE,
        {"c4_curly_bracket": True},
    ),
    ("c4_few_sentences", FEW_SENTENCES, PROSE, {}),
    ("code_autogenerated", "# Code generated by protoc-gen-go. DO NOT EDIT.\n" + FUNCTION, FUNCTION, {}),
    ("code_long_line", FUNCTION + "\nTABLE = " + repr("x" * 1200), FUNCTION, {}),
    ("code_long_mean_line", "\n".join(f"ROW_{i} = {list(range(40))}" for i in range(5)), FUNCTION, {}),
    ("code_few_alphanumeric", ASCII_ART, FUNCTION, {}),
    ("code_duplicate_lines", FUNCTION + "\n" + "\n".join(["    total += value"] * 40), FUNCTION, {}),
]


@pytest.mark.parametrize(("reason", "failing", "passing", "overrides"), CASES, ids=[c[0] for c in CASES])
def test_each_rule_fails_one_document_and_passes_another(
    reason: str, failing: str, passing: str, overrides: dict[str, Any]
) -> None:
    config = QualityConfig(**overrides)
    code = reason.startswith("code_")
    problem = quality_problem(failing, code=code, config=config)
    assert problem is not None and problem[0] == reason, problem
    assert quality_problem(passing, code=code, config=config) is None


def test_every_reason_is_tested_and_explained() -> None:
    assert [c[0] for c in CASES] == list(REASONS)
    assert all(REASONS.values())


def test_detail_states_the_value_and_the_threshold() -> None:
    assert quality_problem(" ".join(PROSE.split()[:30]), code=False, config=QualityConfig()) == (
        "gopher_few_words",
        "30 words < 50",
    )
    short = quality_problem(" ".join(["It is a cat on a mat."] * 8), code=False, config=QualityConfig())
    assert short == ("gopher_short_words", "mean word length 2 < 3")


def test_realistic_prose_and_code_pass_every_rule() -> None:
    config = QualityConfig()
    assert quality_problem(PROSE, code=False, config=config) is None
    assert quality_problem(FUNCTION, code=True, config=config) is None
    # the prose rules would reject code (too few stop words), which is why code has its own
    assert quality_problem(FUNCTION, code=False, config=config) is not None


@pytest.mark.parametrize("text", ["", "  \n\n "])
def test_empty_documents_are_removed_without_errors(text: str) -> None:
    config = QualityConfig()
    assert quality_problem(text, code=False, config=config) == ("gopher_few_words", "0 words < 50")
    assert quality_problem(text, code=True, config=config) == (
        "code_few_alphanumeric",
        "letters and digits 0 < 0.25",
    )
    assert quality_problem(text, code=False, config=QualityConfig(min_words=0, c4_min_sentences=0)) is None


def test_curly_brackets_and_disabled_rules_pass() -> None:
    assert quality_problem(PROSE + "\n\nThe dict {'a': 1}.", code=False, config=QualityConfig()) is None
    off = QualityConfig(enabled=False)
    assert quality_problem("too short", code=False, config=off) is None
    assert filter_lines("no punctuation here", off) == ("no punctuation here", 0)


def test_filter_lines_removes_exactly_the_c4_lines() -> None:
    text = "\n".join(
        [
            "A Short History",  # no terminal punctuation
            "",
            "The press spread quickly across Europe.",
            "Yes.",  # fewer than 3 words
            "Please enable JavaScript to view the comments.",
            "This site uses cookies to improve your experience.",
            "Read our Privacy Policy before you continue.",
            "And then the story goes on...",  # an ellipsis is not an ending
            "",
            "",
            "Printers, he wrote, were “the new scribes.”",
            "Menu",
        ]
    )
    config = QualityConfig(c4_lines=True)
    expected = "The press spread quickly across Europe.\n\nPrinters, he wrote, were “the new scribes.”"
    assert filter_lines(text, config) == (expected, 7)
    assert filter_lines(expected, config) == (expected, 0)
    assert filter_lines(text, QualityConfig()) == (text, 0)  # c4_lines is off by default


def test_few_sentences_counts_only_the_lines_c4_keeps() -> None:
    scripted = [
        "Our JavaScript timeline shows every press founded before 1600.",
        "Enable JavaScript to see the map of printing towns.",
        "The JavaScript viewer lets you zoom into each page.",
    ]
    text = "\n".join([FIRST_PARAGRAPH, *scripted])
    assert quality_problem(text, code=False, config=QualityConfig()) is None
    problem = quality_problem(text, code=False, config=QualityConfig(c4_lines=True))
    assert problem == ("c4_few_sentences", "3 sentences < 5")


@pytest.mark.parametrize(
    ("source", "domain", "expected"),
    [
        ("src/forge/model.py", "docs", True),
        ("lib/Parser.RS", "docs", True),
        ("corpus.jsonl:12", "code", True),
        ("corpus.jsonl:12", "docs", False),
        ("scripts/run.sh:3", "docs", True),
        ("README.md", "docs", False),
        ("pydoc_data.topics['if']", "docs", False),
        ("", "code", True),
    ],
)
def test_is_code(source: str, domain: str, expected: bool) -> None:
    assert is_code(source, domain) is expected


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        ({"min_words": -1}, "--quality.min-words"),
        ({"max_words": 10}, "--quality.max-words"),
        ({"max_mean_word_length": 2}, "--quality.max-mean-word-length"),
        ({"max_duplicate_line_fraction": 1.5}, "--quality.max-duplicate-line-fraction"),
        ({"code_min_alphanumeric_fraction": -0.1}, "--quality.code-min-alphanumeric-fraction"),
        ({"top_ngram_max_fractions": (0.2, 0.2, 0.2, 0.2)}, "--quality.top-ngram-max-fractions"),
        ({"duplicate_ngram_max_fractions": (2.0,)}, "--quality.duplicate-ngram-max-fractions"),
        ({"c4_min_sentences": -5}, "--quality.c4-min-sentences"),
    ],
)
def test_invalid_config_names_the_flag(overrides: dict[str, Any], flag: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(flag)):
        QualityConfig(**overrides)


def test_fewer_ngram_thresholds_check_fewer_n() -> None:
    config = QualityConfig(top_ngram_max_fractions=(), duplicate_ngram_max_fractions=())
    assert quality_problem(TOP_BIGRAM, code=False, config=config) is None
