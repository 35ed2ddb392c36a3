"""`synthesize`: conversations derived from a tiny fake standard library, and once from the real one."""

import json
import random
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from forge.cli.main import main
from forge.data.synth_sft import SynthSftConfig, in_third_person, summary_of, synthesize, validation_modules
from forge.errors import ConfigError, DataError
from forge.tokenizer.chat import check_messages
from forge.train.sft_data import read_conversations

ALPHA = '''
    """Module alpha."""


    def add_numbers(a, b=1):
        """Return the sum of two numbers a and b.

        Works for ints and floats.
        """
        return a + b


    def _private(x):
        """Return a private thing that nobody needs."""
        return x


    def undocumented(x):
        return x


    def short(x):
        """Do it."""
        return x


    class Tally:
        """Counts things."""

        def __init__(self):
            """Make a tally that starts at zero, as usual."""
            self.count = 0

        @staticmethod
        def zero(unused, /, *, strict=False):
            """Same as the starting count, whatever the tally."""
            return 0

        def add(self, step=1):
            """Add step to the count and return the new count."""
            self.count += step
            return self.count

        def total(self):
            """Compute the total that subclasses must define."""
            raise NotImplementedError
'''
BETA = '''
    def add_numbers(a, b=1):
        """Return the sum of two numbers a and b.

        Works for ints and floats.
        """
        return a + b
'''
PKG = '''
    def helper(text):
        """Strip spaces from both ends of the text, then convert it to lower case."""
        return text.strip().lower()
'''
DOCUMENTED = 'def documented(x):\n    """Return x unchanged, as documented here."""\n    return x\n'


def _tree(root: Path) -> Path:
    (root / "pkg" / "tests").mkdir(parents=True)
    (root / "alpha.py").write_text(textwrap.dedent(ALPHA))
    (root / "beta.py").write_text(textwrap.dedent(BETA))  # a duplicate of alpha.add_numbers
    (root / "broken.py").write_text("def oops(:\n    pass\n")
    (root / "pkg" / "__init__.py").write_text(textwrap.dedent(PKG))
    (root / "pkg" / "tests" / "test_pkg.py").write_text(DOCUMENTED)  # a test suite
    (root / "_hidden.py").write_text(DOCUMENTED)  # a private module
    return root


def _run(tmp_path: Path, **options: Any) -> tuple[dict[str, Any], list[list[dict[str, str]]], list[Any]]:
    config = SynthSftConfig(out=str(tmp_path / "sft"), **options)
    report = synthesize(config, root=_tree(tmp_path / "lib"))
    train = [json.loads(line)["messages"] for line in (tmp_path / "sft" / "train.jsonl").open()]
    val = [json.loads(line)["messages"] for line in (tmp_path / "sft" / "val.jsonl").open()]
    return report, train, val


def test_conversations_of_a_tiny_tree(tmp_path: Path) -> None:
    report, train, val = _run(tmp_path, val_fraction=0.0)
    assert val == []
    pairs = {(m[0]["content"], m[1]["content"]) for m in train}
    users = sorted(user for user, _ in pairs)
    assert users == [
        "Define a function `helper(text)` which strips spaces from both ends of the text, then converts it "
        "to lower case.",
        "Describe the method `alpha.Tally.add`.",
        "Describe the method `alpha.Tally.total`.",  # explained, but no "write": its body is a stub
        "Explain what `alpha.Tally.zero` does.",
        "Explain what `alpha.add_numbers` does.",
        "Explain what `beta.add_numbers` does.",  # the "write" of beta.add_numbers is alpha's answer
        "What does `pkg.helper` do?",
        "Write a Python function `add_numbers(a, b=1)` that returns the sum of two numbers a and b.",
        "Write a method `Tally.add(step=1)` that adds step to the count and returns the new count.",
        "Write the method `Tally.zero(unused, /, *, strict=False)` as documented: Same as the starting "
        "count, whatever the tally.",
    ]
    answers = dict(pairs)
    assert answers[
        "Write a method `Tally.add(step=1)` that adds step to the count and returns the new count."
    ] == (
        "def add(self, step=1):\n"
        '    """Add step to the count and return the new count."""\n'
        "    self.count += step\n"
        "    return self.count"
    )
    assert answers["Explain what `alpha.add_numbers` does."] == (
        "`alpha.add_numbers(a, b=1)` returns the sum of two numbers a and b.\n\nWorks for ints and floats."
    )
    assert answers["Explain what `alpha.Tally.zero` does."] == (
        "`alpha.Tally.zero(unused, /, *, strict=False)`: Same as the starting count, whatever the tally."
    )
    zero = next(a for u, a in pairs if u.startswith("Write the method `Tally.zero"))
    assert zero.startswith("@staticmethod\ndef zero(unused, /, *, strict=False):\n")
    assert report["conversations"] == {"write": 4, "explain": 6}
    assert report["skipped"] == {
        "private": 1,
        "dunder": 1,
        "no_docstring": 1,
        "short_summary": 1,
        "stub_body": 1,
    }
    assert report["duplicates_removed"] == {"same_conversation": 0, "same_answer": 1}  # beta's source
    assert report["files_read"] == 4 and report["functions_seen"] == 10
    assert report["files_skipped"] == {"private_module": 1, "test_suite": 1}
    assert report["parse_failures"] == 1 and "broken.py" in report["parse_failure_examples"][0]["file"]


def test_messages_are_valid_conversations_with_the_system_message(tmp_path: Path) -> None:
    _, train, _ = _run(tmp_path, system="You are a Python expert.")
    for messages in train:
        check_messages(messages)
        assert [m["role"] for m in messages] == ["system", "user", "assistant"]
        assert messages[0]["content"] == "You are a Python expert."
    assert read_conversations(tmp_path / "sft" / "train.jsonl") == train


def test_modules_are_held_out_whole(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    root.mkdir()
    for i in range(12):  # module m{i} holds functions f{i}_{j}: a prompt's function names its module
        functions = [
            f'def f{i}_{j}(x):\n    """Return x plus {j}, in module {i} only."""\n    return x + {j}\n'
            for j in range(i % 4 + 1)
        ]
        (root / f"m{i}.py").write_text("\n\n".join(functions))
    report = synthesize(SynthSftConfig(out=str(tmp_path / "sft"), val_fraction=0.3, seed=3), root=root)

    def modules(split: str) -> set[str]:
        lines = (tmp_path / "sft" / f"{split}.jsonl").read_text().splitlines()
        names = [json.loads(line)["messages"][0]["content"].split("`")[1] for line in lines]
        return {"m" + name.rsplit(".", 1)[-1].split("_")[0].removeprefix("f") for name in names}

    train, val = modules("train"), modules("val")
    assert train and val and not train & val
    assert train | val == {f"m{i}" for i in range(12)}
    assert sorted(val) == report["validation_modules"] and report["val"]["modules"] == len(val)
    assert report["train"]["conversations"] + report["val"]["conversations"] == 60
    assert abs(report["val"]["conversations"] / 60 - 0.3) < 0.05


def test_validation_share_is_close_to_the_fraction() -> None:
    sizes = random.Random(0).choices(range(1, 60), k=300)
    counts = Counter({f"module{i}": n for i, n in enumerate(sizes)})
    for fraction in (0.05, 0.1, 0.3):
        held = validation_modules(counts, fraction, seed=1)
        share = sum(counts[m] for m in held) / sum(counts.values())
        assert abs(share - fraction) < 0.01
    assert validation_modules(counts, 0.1, seed=1) != validation_modules(counts, 0.1, seed=2)
    assert validation_modules(Counter({"only": 5}), 0.5, seed=0) == []  # training keeps a module


def test_runs_are_byte_identical(tmp_path: Path) -> None:
    _run(tmp_path, val_fraction=0.4)
    first = {
        name: (tmp_path / "sft" / name).read_bytes() for name in ("train.jsonl", "val.jsonl", "report.json")
    }
    _run(tmp_path / "again", val_fraction=0.4)
    again = {name: (tmp_path / "again" / "sft" / name).read_bytes() for name in first}
    assert again["train.jsonl"] == first["train.jsonl"] and again["val.jsonl"] == first["val.jsonl"]
    # the report names the paths; all else is equal
    assert again["report.json"].replace(b"/again", b"") == first["report.json"]


def test_summaries_and_verb_phrases() -> None:
    assert summary_of("Return x, e.g. 3. More text.\n\nDetails.") == "Return x, e.g. 3."
    assert summary_of("Return the\n  value\n\nDetails. More.") == "Return the value"
    assert in_third_person("Return or set the delay.") == "returns or sets the delay."
    assert in_third_person("Read a line and return it.") == "reads a line and returns it."
    assert in_third_person("Recursively remove a tree.") == "recursively removes a tree."
    assert in_third_person("Apply f.") == "applies f."
    assert in_third_person("The value of x.") is None
    assert in_third_person("Byte-compile a file.") is None


def test_bad_options_and_outputs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--val-fraction"):
        SynthSftConfig(val_fraction=1.0)
    with pytest.raises(ConfigError, match="--max-answer-chars"):
        SynthSftConfig(max_answer_chars=0)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="--out"):
        synthesize(SynthSftConfig(out=str(tmp_path / "busy")), root=_tree(tmp_path / "lib"))
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no conversations"):
        synthesize(SynthSftConfig(out=str(tmp_path / "sft")), root=tmp_path / "empty")


@pytest.mark.slow
def test_the_standard_library(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sft"
    main(["data", "synth-sft", "--out", str(out)])
    assert f"→ {out}" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["conversations"]["write"] > 1000 and report["conversations"]["explain"] > 1000
    assert report["parse_failures"] == 0
    assert 0.05 < report["val"]["conversations"] / report["train"]["conversations"] < 0.2
    kinds = Counter("write" if m[1]["content"].startswith(("def", "async", "@")) else "explain"
                    for m in read_conversations(out / "train.jsonl"))  # fmt: skip
    assert kinds["write"] > 1000 and kinds["explain"] > 1000
