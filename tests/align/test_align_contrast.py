"""Contrast pairs: an answer against its copy with the asked name replaced by a near miss."""

import json
import random
from pathlib import Path

from forge.align.contrast import name_parts, near_miss, renamed_answer
from forge.align.formats import read_preferences
from forge.align.preferences import NewPair
from forge.align.rule import asked_name, judge
from forge.align.sample_pairs import SampledPair, synthesize

WRITE = "Write a Python function `dirname(p)` that returns the directory component of a pathname."
EXPLAIN = "What does `distutils.ccompiler.CCompiler.library_dir_option` do?"
DIRNAME = (
    'def dirname(p):\n    """Returns the directory of p."""\n    return split(p)[0]\n\nx = dirname("a/b")'
)
LIBRARY = "`library_dir_option(dir)` returns the option that adds dir. Library_Dir_Option is a method."


def test_name_parts_split_on_underscores_and_capitals() -> None:
    assert name_parts("library_dir_option") == ["library", "dir", "option"]
    assert name_parts("TestResult") == ["Test", "Result"]
    assert name_parts("getHTTPResponse2") == ["get", "HTTP", "Response2"]


def test_near_misses_are_identifiers_that_differ_from_the_name_in_any_case() -> None:
    rng = random.Random(0)
    for name in ("asksaveasfilename", "library_dir_option", "TestResult", "le", "x"):
        misses = {near_miss(name, rng, ["file", "open", "Path"]) for _ in range(50)}
        assert None not in misses and len(misses) > 5
        assert all(m is not None and m.isidentifier() and m.lower() != name.lower() for m in misses)


def test_asked_name_is_the_function_to_write_or_the_last_part_of_the_one_to_explain() -> None:
    assert asked_name(WRITE) == ("dirname", True)
    assert asked_name(EXPLAIN) == ("library_dir_option", False)
    assert asked_name("Tell me a joke.") is None


def test_renaming_replaces_every_whole_word_occurrence_and_fails_only_the_name_check() -> None:
    copy = renamed_answer(WRITE, DIRNAME, ["base", "path"])
    assert copy is not None and "dirname" not in copy
    assert copy.count("def ") == 1 and copy.replace(copy.split("(")[0][4:], "dirname") == DIRNAME
    before, after = judge(WRITE, DIRNAME), judge(WRITE, copy)
    assert before.passes and after.failed == ("defines_name",)
    # an explanation is checked in any case, so every casing of the name goes
    copy = renamed_answer(EXPLAIN, LIBRARY, ["path"])
    assert copy is not None and "library_dir_option" not in copy.lower()
    assert judge(EXPLAIN, LIBRARY).passes and judge(EXPLAIN, copy).failed == ("mentions_name",)


def test_renaming_is_seeded_by_the_prompt_and_the_answer() -> None:
    assert renamed_answer(WRITE, DIRNAME) == renamed_answer(WRITE, DIRNAME)
    copies = {renamed_answer(WRITE, DIRNAME + "\n" * i) for i in range(8)}
    assert len({c.split("(")[0] for c in copies if c is not None}) > 1


def test_nothing_to_rename_gives_none() -> None:
    assert renamed_answer(WRITE, "def other(p):\n    return p") is None
    assert renamed_answer("Tell me a joke.", "dirname") is None
    # "dirnames" is another word: the name itself never appears
    assert renamed_answer(WRITE, "def dirnames(p):\n    return p") is None


def test_synthesize_adds_a_renamed_pair_for_each_passing_answer(tmp_path: Path) -> None:
    write = [{"role": "user", "content": WRITE}]
    broken = "def dirname(p) return"

    def pair(a: str, b: str) -> SampledPair:
        return SampledPair(NewPair(prompt=write, answer_a=a, answer_b=b), True, True)

    sampled = [pair(DIRNAME, broken), pair(broken, "def dirname(q):\n    return q")]
    plain = synthesize(sampled, tmp_path / "plain.jsonl", prompts=1)
    report = synthesize(sampled, tmp_path / "prefs.jsonl", prompts=1, renamed=True)
    assert plain["renamed_pairs"] == 0 and report["renamed_pairs"] == 2
    assert report["pairs_kept"] == plain["pairs_kept"] == 2
    records = [json.loads(line) for line in (tmp_path / "prefs.jsonl").read_text().splitlines()]
    contrasts = [r for r in records if r.get("origin") == "renamed"]
    assert [r["chosen"] for r in contrasts] == [DIRNAME, "def dirname(q):\n    return q"]
    for r in contrasts:
        assert judge(write, r["chosen"]).passes and judge(write, r["rejected"]).failed == ("defines_name",)
    assert len(read_preferences(tmp_path / "prefs.jsonl")) == 4  # the extra field reads as a plain pair
