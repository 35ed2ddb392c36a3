"""`forge label synth|serve|export|import` end to end on a tiny random model."""

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from forge.align.formats import read_preferences
from forge.align.preferences import PreferenceStore
from forge.cli import label
from forge.errors import ConfigError, DataError
from forge.model.config import ModelConfig
from forge.model.io import save_model
from forge.model.transformer import Transformer
from forge.tokenizer.bpe import TokenizerConfig, train_tokenizer

TEXT = "def add(a, b):\n    return a + b\n\nWrite a function that joins paths. What does it do?\n" * 40
PROMPTS = [
    {"messages": [{"role": "user", "content": "Write a Python function `add(a, b)` that adds."},
                  {"role": "assistant", "content": "def add(a, b):\n    return a + b"}]},
    {"prompt": "What does `posixpath.join` do?"},
    {"prompt": "Implement `split(p)`: Split a pathname."},
]  # fmt: skip


def _forge(*argv: str) -> None:
    parser = argparse.ArgumentParser(prog="forge")
    label.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["label", *argv])
    args.handler(args)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("label") / "tiny-run"
    tokenizer = train_tokenizer([TEXT], TokenizerConfig(vocab_size=300))
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size, context_length=128, dim=32, num_layers=2, num_heads=4, num_kv_heads=2
    )
    save_model(Transformer(config), run)
    tokenizer.save(run / "tokenizer")
    return run


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return path


def test_synth_writes_the_pairs_the_rule_separates_and_a_report(
    run: Path, prompts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "prefs.jsonl"
    _forge("synth", str(run), "--prompts", str(prompts), "--out", str(out), "--pairs-per-prompt", "2",
           "--max-new-tokens", "12", "--threads", "1", "--device", "cpu", "--renamed")  # fmt: skip
    report = json.loads((tmp_path / "prefs.report.json").read_text())
    assert report["prompts"] == 3 and report["pairs_sampled"] + report["skipped"].get("identical", 0) == 6
    assert report["pairs_kept"] + report["ties_skipped"] == report["pairs_sampled"]
    assert report["answers"] == 2 * report["pairs_sampled"]
    assert set(report["pass_rate_by_kind"]) <= {"write", "explain"} and 0 <= report["pass_rate"] <= 1
    assert "stands in for human judgements" in report["note"] and report["config"]["max_new_tokens"] == 12
    lines = out.read_text().splitlines()
    assert len(lines) == report["pairs_kept"] + report["renamed_pairs"]
    if lines:
        assert all(r["prompt"][-1]["role"] == "user" for r in read_preferences(out))
    printed = capsys.readouterr().out
    assert f"kept {report['pairs_kept']}" in printed and "stand" in printed
    assert f"renamed contrast pairs {report['renamed_pairs']}" in printed


def test_serve_samples_pairs_once_then_serves_them(
    run: Path, prompts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    served: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.append((app, kwargs)))
    db = tmp_path / "prefs.db"
    common = ["--db", str(db), "--max-new-tokens", "6", "--threads", "1", "--device", "cpu", "--port", "8123"]
    _forge("serve", str(run), "--prompts", str(prompts), *common)
    store = PreferenceStore(db)
    pairs = store.progress()["pairs"]
    assert 1 <= pairs <= 3 and served[0][1]["port"] == 8123 and served[0][1]["host"] == "127.0.0.1"
    pair = store.next_pair("ann")
    assert pair is not None and pair.model_id == "tiny-run" and pair.answer_a != pair.answer_b
    assert pair.sampling["seed_b"] == pair.sampling["seed_a"] + 1 and pair.sampling["max_new_tokens"] == 6
    _forge("serve", str(run), "--prompts", str(prompts), *common)  # the prompts already have pairs
    _forge("serve", *common)  # no model: the pairs in the database
    assert store.progress()["pairs"] == pairs and len(served) == 3
    with pytest.raises(DataError, match="holds no pairs"):
        _forge("serve", "--db", str(tmp_path / "empty.db"))
    with pytest.raises(ConfigError, match="--prompts needs RUN_DIR"):
        _forge("serve", "--prompts", str(prompts), "--db", str(db))


def test_export_and_import_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data.jsonl"
    record = {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."}
    data.write_text(json.dumps(record) + "\n")
    _forge("import", str(data), "--db", str(tmp_path / "prefs.db"))
    assert "1 added" in capsys.readouterr().out
    _forge("export", "--db", str(tmp_path / "prefs.db"), "--out", str(tmp_path / "out.jsonl"))
    assert json.loads((tmp_path / "out.jsonl").read_text()) == {
        "prompt": [{"role": "user", "content": "Say hi"}],
        "chosen": "Hi!",
        "rejected": "No.",
    }
    with pytest.raises(DataError, match="no such database"):
        _forge("export", "--db", str(tmp_path / "missing.db"), "--out", str(tmp_path / "x.jsonl"))


@pytest.mark.parametrize("command", ["serve", "synth", "export", "import"])
def test_every_label_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        _forge(command, "--help")
    assert exit.value.code == 0 and "usage: forge label " + command in capsys.readouterr().out


def test_every_pair_compares_each_two_answers_of_a_prompt_once(tmp_path: Path) -> None:
    from forge.align.preferences import NewPair
    from forge.align.sample_pairs import SampledPair, synthesize

    write = [{"role": "user", "content": "Write a Python function `add(a, b)` that adds."}]
    good, wrong_name = "def add(a, b):\n    return a + b", "def sub(a, b):\n    return a - b"
    broken, good_too = "def add(a, b) return", "def add(x, y):\n    return x + y"

    def pair(prompt: list[dict[str, str]], a: str, b: str, finished_b: bool = True) -> SampledPair:
        return SampledPair(NewPair(prompt=prompt, answer_a=a, answer_b=b, sampling={}, model_id="m"), True,
                           finished_b)  # fmt: skip

    explain = [{"role": "user", "content": "What does `posixpath.join` do?"}]
    joins, joined = "It joins paths with join.", "join: It joins paths."
    sampled = [pair(write, good, wrong_name), pair(write, broken, good_too), pair(explain, joins, joins),
               pair(explain, joins, joined, finished_b=False)]  # fmt: skip
    as_sampled = synthesize(sampled, tmp_path / "sampled.jsonl", prompts=2)
    assert (as_sampled["pairs_compared"], as_sampled["pairs_kept"], as_sampled["answers"]) == (3, 3, 6)
    every = synthesize(sampled, tmp_path / "every.jsonl", prompts=2, every_pair=True)
    # write: 4 answers, 6 comparisons, two ties (both pass; both fail one check); explain: 2 texts, 1
    assert (every["pairs_compared"], every["pairs_kept"], every["ties_skipped"]) == (7, 5, 2)
    assert every["answers"] == 6 and every["pairing"] == "every pair of a prompt's answers"
    records = read_preferences(tmp_path / "every.jsonl")
    won = {(r["chosen"], r["rejected"]) for r in records}
    assert {(good, wrong_name), (good, broken), (good_too, wrong_name), (good_too, broken)} <= won
    assert (joins, joined) in won  # ended by itself beats cut at the limit
    assert {(r["chosen"], r["rejected"]) for r in read_preferences(tmp_path / "sampled.jsonl")} <= won
