"""Interrupting `forge pretrain`: SIGTERM saves a checkpoint and exits; SIGKILL at random moments, each
followed by --resume, ends with exactly the weights of an uninterrupted run."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from forge.train.checkpoint import find_resumable

PRETRAIN = ["--model.dim", "32", "--model.num-layers", "1", "--model.context-length", "32",
            "--batch-size", "4", "--max-steps", "150", "--eval-every", "0", "--checkpoint-every", "5",
            "--keep-checkpoints", "2", "--threads", "1", "--no-progress", "--peak-tflops", "1",
            "--warmup-steps", "5"]  # fmt: skip


def _pretrain(shards: Path, run: Path, *, resume: bool = False) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "forge.cli.main",
        "pretrain",
        "--data",
        str(shards),
        "--out",
        str(run),
        *PRETRAIN,
    ]
    return subprocess.Popen(
        argv + (["--resume"] if resume else []), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def _wait_for_checkpoint(run: Path, process: subprocess.Popen, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while not (run / "checkpoints" / "latest").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tiny_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    process = _pretrain(tiny_shards, run)
    assert _wait_for_checkpoint(run, process)
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 0, output
    assert "interrupted at step" in output
    saved = find_resumable(run)
    assert saved is not None and int(saved.name.split("-")[1]) < 150  # the step it stopped at, not the end
    assert not (run / "model.safetensors").exists()


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_weights(
    tiny_shards: Path, tmp_path: Path
) -> None:
    reference = tmp_path / "reference"
    assert _pretrain(tiny_shards, reference).wait(timeout=300) == 0
    run, rng, kills = tmp_path / "killed", random.Random(0), 0
    process = _pretrain(tiny_shards, run)
    while kills < 5 and _wait_for_checkpoint(run, process):
        time.sleep(rng.uniform(0.0, 0.5))  # anywhere: mid-step, mid-checkpoint, mid-log line
        if process.poll() is not None:
            break
        process.kill()
        process.wait()
        kills += 1
        process = _pretrain(tiny_shards, run, resume=True)
    output = process.communicate(timeout=300)[0].decode()
    assert process.returncode == 0, output
    assert kills >= 3  # the run was really interrupted, several times
    expected, got = load_file(reference / "model.safetensors"), load_file(run / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        assert (expected[name] == got[name]).all(), name
