"""MFU: a measured matmul peak, and utilisation logged beside throughput."""

import json
from pathlib import Path

import torch
from test_train_checkpoint import CPU, _setup

from forge.train.loop import TrainConfig, TrainState, train
from forge.train.mfu import measure_peak_flops, model_flops_utilization


def test_peak_is_a_positive_rate_and_small_probes_stay_small() -> None:
    assert measure_peak_flops(torch.float32, "cpu", size=64, seconds=0.05) > 1e6  # any CPU does 1 MFLOP/s
    assert measure_peak_flops(torch.float32, "cpu", seconds=0.05) > 1e6  # adaptive size


def test_each_log_record_carries_mfu_from_throughput(tmp_path: Path) -> None:
    model, opt, loader = _setup()
    config = TrainConfig(max_steps=4, log_every=2, eval_every=0, checkpoint_every=0, progress=False)
    train(model, opt, config, run_dir=tmp_path, next_batch=loader.next_batch, data_state=loader.state_dict,
          state=TrainState(), device=CPU, flops_per_token=1e6, peak_flops=1e9)  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "train_loss" in r]
    assert len(logged) == 2
    for r in logged:
        assert r["mfu"] == float(f"{1e6 * r['tokens_per_s'] / 1e9:.4g}")


def test_mfu_keeps_significant_digits_when_the_model_is_tiny_for_the_hardware() -> None:
    # a 0.03M-parameter model on a GPU with a 400 TFLOP/s peak: far below 1e-4, yet not zero
    assert model_flops_utilization(2e5, 1e5, 4e14) == 5e-5
    assert model_flops_utilization(1.0, 0.123456789, 1.0) == 0.1235
