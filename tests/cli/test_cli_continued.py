"""Continued pretraining: `forge pretrain --init-from RUN` starts from the run's weights, checks the
tokenizer, replays the original domain, measures forgetting on it, and resumes exactly."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from forge.cli.main import main
from forge.tokenizer.bpe import Tokenizer

TINY = [
    "--batch-size",
    "4",
    "--warmup-steps",
    "2",
    "--no-progress",
    "--peak-tflops",
    "1",
    "--eval-every",
    "0",
]


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _same_evaluation(a: float, b: float) -> bool:
    """Bitwise on CPU. On CUDA, the same weights evaluated by two model instances were seen to differ in
    the 8th significant digit, so there the two must agree to 1e-6 relative."""
    return a == b if not torch.cuda.is_available() else a == pytest.approx(b, rel=1e-6)


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["train_loss"] for r in _records(run) if "train_loss" in r}


@pytest.fixture(scope="module")
def base_run(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run on `tiny_shards`: the original domain."""
    run = tmp_path_factory.mktemp("continued") / "base"
    shape = ["--model.dim", "32", "--model.num-layers", "1", "--model.context-length", "32"]
    argv = ["pretrain", "--data", str(tiny_shards), "--out", str(run), *shape, *TINY]
    assert main([*argv, "--max-steps", "10", "--lr", "1e-2", "--checkpoint-every", "0"]) == 0
    return run


@pytest.fixture(scope="module")
def new_shards(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new domain in the same tokenizer: the tiny shards with every file's tokens reversed."""
    out = tmp_path_factory.mktemp("new-domain") / "shards"
    shutil.copytree(tiny_shards, out)
    for path in out.glob("*.bin"):
        path.write_bytes(np.fromfile(path, dtype="<u2")[::-1].tobytes())
    return out


def test_init_from_starts_from_the_run_weights_and_measures_the_original_domain(
    base_run: Path, new_shards: Path, tmp_path: Path
) -> None:
    run = tmp_path / "continued"
    argv = ["pretrain", "--init-from", str(base_run), "--data", str(new_shards), "--out", str(run)]
    assert main([*argv, "--model.dim", "32", "--max-steps", "3", *TINY]) == 0  # a shape equal to the run's
    base = _read(base_run / "summary.json")
    initial = _records(run)[0]
    assert initial["step"] == 0 and initial["val_final"]
    # the original domain (the data recorded in the run's config.json) scored at step 0 by the run's
    # weights: exactly the run's own final evaluation
    assert _same_evaluation(initial["val_loss_original"], base["val_loss"])
    assert initial["val_loss"] > initial["val_loss_original"]  # the new domain is new to it
    summary = _read(run / "summary.json")
    assert summary["init_from"] == str(base_run)
    assert summary["original_domain"]["bpb_before"] == initial["val_bpb_original"]
    assert (
        summary["original_domain"]["bpb_after"]
        == summary["val_bpb_original"]
        == _records(run)[-2]["val_bpb_original"]
    )
    config = _read(run / "config.json")
    assert config["train"]["init_from"] == str(base_run)
    assert config["model"] == _read(base_run / "config.json")["model"]
    assert "initialised from" in (run / "report.md").read_text()


def test_continued_run_with_replay_resumes_exactly(
    base_run: Path, new_shards: Path, tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    replay = ["--replay-data", str(tiny_shards), "--replay-fraction", "0.5", "--log-every", "1"]
    argv = ["pretrain", "--data", str(new_shards), *replay, *TINY]
    argv += ["--max-steps", "6", "--checkpoint-every", "3", "--keep-checkpoints", "0"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main([*argv, "--init-from", str(base_run), "--out", str(full)]) == 0
    # the same run stopped at its step-3 checkpoint, then resumed: the weights come from the checkpoint;
    # --init-from may be left out (the run's config.json names it) and would be ignored if given
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step-0000006")
    saved = _read(part / "checkpoints" / "step-0000003" / "state.json")
    assert saved["data"] == {"data": {"position": 3}, "replay": {"position": 3}}
    capsys.readouterr()
    assert main([*argv, "--out", str(part), "--resume"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert _losses(part)[4] == _losses(full)[4]  # the next step's loss, bitwise
    assert _losses(part) == _losses(full)
    summaries = [_read(run / "summary.json") for run in (full, part)]
    assert summaries[1]["init_from"] == str(base_run)
    assert summaries[0]["original_domain"] == summaries[1]["original_domain"]
    before = summaries[0]["original_domain"]["bpb_before"]  # the replay data's val split, at step 0
    assert _same_evaluation(before, _read(base_run / "summary.json")["val_bpb"])


def test_mistakes_get_a_clear_error(
    base_run: Path, tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    foreign = tmp_path / "foreign"  # shards made by another tokenizer
    shutil.copytree(tiny_shards, foreign)
    meta = _read(foreign / "meta.json") | {"tokenizer_fingerprint": "0123456789abcdef"}
    (foreign / "meta.json").write_text(json.dumps(meta))
    start = ["pretrain", "--init-from", str(base_run), "--out", str(tmp_path / "run"), *TINY]
    fingerprint = Tokenizer.load(base_run / "tokenizer").fingerprint()
    cases = [
        (
            ["--data", str(foreign)],
            ["0123456789abcdef", fingerprint, f"--tokenizer {base_run / 'tokenizer'}"],
        ),
        (["--data", str(tiny_shards), "--model.dim", "48"], ["--model.dim 48 (the run has 32)"]),
        (["--data", str(tiny_shards), "--preset", "small"], ["drop --preset"]),
        (["--data", str(tiny_shards), "--replay-fraction", "0.5"], ["needs --replay-data"]),
    ]
    for argv, messages in cases:
        assert main([*start, *argv]) == 2, argv
        err = capsys.readouterr().err
        assert all(m in err for m in messages) and "Traceback" not in err, err
