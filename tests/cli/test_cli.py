"""The `forge` command end to end on a few KB of data, every --help, and errors without tracebacks."""

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from forge.cli.main import build_parser, main


def _subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*prefix, name))
                found += _subcommands(sub, (*prefix, name))
    return found


COMMANDS = _subcommands(build_parser())


def test_all_stage_commands_exist() -> None:
    assert {
        ("data", "prepare"),
        ("data", "tokenize"),
        ("tokenizer", "train"),
        ("pretrain",),
        ("generate",),
        ("eval",),
    } <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_describes_every_option(command: tuple[str, ...], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    parser = build_parser()
    for name in command:  # walk down to the subcommand's parser
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    for action in parser._actions:
        assert action.help, (
            f"forge {' '.join(command)}: option {action.option_strings or action.dest} has no help"
        )
    assert "usage: forge" in capsys.readouterr().out


def _write_corpus(root: Path) -> Path:
    src = root / "corpus"
    (src / "pkg").mkdir(parents=True)
    for i in range(24):
        body = textwrap.dedent(f'''
            """Module {i}: helpers for counting things."""

            import os


            def count_{i}(items, start={i}):
                """Return how many items there are, starting from {i}."""
                total = start
                for item in items:
                    if item is not None:
                        total += 1
                return total


            class Counter{i}:
                def __init__(self, value={i}):
                    self.value = value
            ''')
        (src / "pkg" / f"mod{i}.py").write_text(body)
    (src / "pkg" / "dup.py").write_text((src / "pkg" / "mod0.py").read_text())  # an exact duplicate
    (src / "README.md").write_text("# Counting\n\nThis package counts things, one module at a time.\n" * 3)
    return src


def test_pipeline_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = _write_corpus(tmp_path)
    docs, tok, shards, run = (tmp_path / d for d in ("docs", "tok", "shards", "run"))
    assert main(["data", "prepare", str(src), "--out", str(docs)]) == 0
    report = json.loads((docs / "report.json").read_text())
    assert "exact_duplicate" in json.dumps(report)
    assert main(["tokenizer", "train", str(docs), "--out", str(tok), "--vocab-size", "320"]) == 0
    assert (
        main(
            [
                "data",
                "tokenize",
                str(docs),
                "--tokenizer",
                str(tok),
                "--out",
                str(shards),
                "--val-fraction",
                "0.2",
                "--num-workers",
                "1",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(shards),
                "--tokenizer",
                str(tok),
                "--out",
                str(run),
                "--model.dim",
                "32",
                "--model.num-layers",
                "1",
                "--model.context-length",
                "32",
                "--batch-size",
                "4",
                "--max-steps",
                "60",
                "--eval-every",
                "20",
                "--eval-batches",
                "2",
                "--lr",
                "1e-2",
                "--checkpoint-every",
                "30",
                "--log-every",
                "5",
                "--warmup-steps",
                "3",
                "--no-progress",
            ]
        )
        == 0
    )
    for name in (
        "model.safetensors",
        "config.json",
        "metrics.jsonl",
        "loss.png",
        "summary.json",
        "report.md",
        "tokenizer/tokenizer.json",
    ):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    losses = [
        json.loads(line)["train_loss"]
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if "train_loss" in line
    ]
    assert losses[-1] < losses[0] * 0.8, losses  # it learned something
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    assert [r["val_final"] for r in evals] == [False, False, True]
    assert [r["tokens"] for r in evals] == [20 * 4 * 32, 40 * 4 * 32, 60 * 4 * 32]  # training progress
    assert summary["val_bpb"] < summary["unigram_bpb"]
    assert 0 < summary["mfu"] < 1 and summary["hardware"]["peak_tflops_measured"] > 0
    report = (run / "report.md").read_text()
    assert (
        f"| final validation loss | {summary['val_loss']:.4f} |" in report and "![loss](loss.png)" in report
    )
    assert "meta.json` sha256" in report and '"model":' in report
    capsys.readouterr()
    assert main(["generate", str(run), "def count", "--max-new-tokens", "12", "--temperature", "0"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("def count") and len(first) > len("def count\n")
    assert main(["generate", str(run), "def count", "--max-new-tokens", "12", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == first  # greedy is deterministic
    assert main(["generate", str(run), "def count", "--max-new-tokens", "4", "--dtype", "bfloat16"]) == 0
    assert capsys.readouterr().out.startswith("def count")
    assert main(["eval", str(run), "--data", str(shards), "--json", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["bpb"] == pytest.approx(
        summary["val_bpb"], rel=1e-5
    )
    # resuming a finished run with a higher step budget continues from its checkpoint
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(shards),
                "--tokenizer",
                str(tok),
                "--out",
                str(run),
                "--resume",
                "--batch-size",
                "4",
                "--max-steps",
                "65",
                "--eval-every",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "resuming from" in capsys.readouterr().out
    assert json.loads((run / "summary.json").read_text())["steps"] == 65


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pretrain", "--data", "/nonexistent/shards"], "forge data tokenize"),
        (["pretrain", "--preset", "huge"], "not a preset"),
        (["pretrain", "--lr", "-1"], "--lr must be positive"),
        (["pretrain", "--batch-size", "many"], "batch_size must be int"),
        (["tokenizer", "train", "/nonexistent/docs", "--out", "x"], "forge data prepare"),
        (["generate", "/nonexistent/run"], "/nonexistent/run"),
    ],
)
def test_user_mistakes_get_a_clear_error_and_no_traceback(
    argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_console_script_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "forge.cli.main", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.startswith("forge ")


def test_a_missing_optional_package_names_its_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if not installed: importing it raises
    monkeypatch.delitem(sys.modules, "forge.image.diffusion", raising=False)
    assert main(["image", "train", "--model", "diffusion", "--help"]) == 2
    err = capsys.readouterr().err
    assert "'diffusers'" in err and "pip install 'forge[image]'" in err and "Traceback" not in err
