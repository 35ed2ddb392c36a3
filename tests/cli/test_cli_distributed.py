"""`forge pretrain` under torchrun: 2-process DDP and FSDP on CPU (gloo) follow the 1-process loss
trajectory with the same global batch, and a 2-process checkpoint resumes in 1 process."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from forge.errors import ConfigError
from forge.train.distributed import init_world

TOLERANCE = 1e-4  # absolute, on the train loss: reductions split across processes round differently
# a constant learning rate, so a run stopped early and one that goes on share their schedule
COMMON = ["--model.dim", "32", "--model.num-layers", "2", "--model.num-heads", "4",
          "--model.num-kv-heads", "2",
          "--model.context-length", "32", "--eval-every", "0", "--checkpoint-every", "4", "--log-every", "1",
          "--warmup-steps", "0", "--min-lr-ratio", "1.0", "--no-progress", "--peak-tflops", "1",
          "--threads", "1", "--device", "cpu"]  # fmt: skip


def _run(shards: Path, run: Path, processes: int, batch: int, steps: int, *extra: str) -> None:
    args = ["pretrain", "--data", str(shards), "--out", str(run), "--batch-size", str(batch),
            "--max-steps", str(steps), *COMMON, *extra]  # fmt: skip
    launcher = [sys.executable, "-m", "forge.cli.main"]
    if processes > 1:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
        assert torchrun is not None
        launcher = [torchrun, "--standalone", f"--nproc-per-node={processes}", "-m", "forge.cli.main"]
    done = subprocess.run(launcher + args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def _losses(run: Path) -> dict[int, float]:
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["train_loss"] for r in records if "train_loss" in r}


def test_ddp_and_fsdp_follow_the_single_process_run_and_resume_in_one_process(
    tiny_shards: Path, tmp_path: Path
) -> None:
    single = tmp_path / "single"
    _run(tiny_shards, single, 1, 8, 12)
    expected = _losses(single)
    assert len(expected) == 12 and expected[12] < expected[1]
    for mode in ("ddp", "fsdp"):
        run = tmp_path / mode
        _run(tiny_shards, run, 2, 4, 8, "--parallel", mode)  # 2 × 4 rows = the single run's 8
        losses = _losses(run)
        assert sorted(losses) == list(range(1, 9)), mode
        for step, loss in losses.items():
            assert loss == pytest.approx(expected[step], abs=TOLERANCE), (mode, step)
        assert (run / "model.safetensors").is_file() and (run / "summary.json").is_file()
    # the FSDP run's step-8 checkpoint, continued by one process with the whole batch
    _run(tiny_shards, tmp_path / "fsdp", 1, 8, 12, "--resume")
    resumed = _losses(tmp_path / "fsdp")
    for step in range(9, 13):
        assert resumed[step] == pytest.approx(expected[step], abs=TOLERANCE), step


def test_more_processes_than_gpus_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # torchrun --nproc-per-node=2 on a one-GPU machine: the second process has no device of its own
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"1 CUDA device\(s\).*--nproc-per-node.*--device cpu"):
        init_world("ddp", torch.device("cuda"))
