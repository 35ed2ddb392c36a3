"""metrics.jsonl survives crashes and resumes; the loss plot is drawn from it."""

import json
from pathlib import Path

from forge.train.metrics import MetricsLog, plot_losses, read_metrics


def test_resume_drops_records_after_the_checkpoint_and_torn_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for step in (10, 20, 30):
        log.log({"step": step, "tokens": step * 100, "train_loss": 5.0 - step / 10})
    log.close()
    with open(path, "a") as f:
        f.write('{"step": 40, "train_lo')  # a crash in the middle of a write
    assert [r["step"] for r in read_metrics(path)] == [10, 20, 30]
    log = MetricsLog(path, truncate_after_step=20)
    log.log({"step": 30, "tokens": 3000, "train_loss": 1.0})
    log.close()
    assert [(r["step"], r["train_loss"]) for r in read_metrics(path)] == [(10, 4.0), (20, 3.0), (30, 1.0)]


def test_plot_is_a_png(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    records = [{"step": s, "tokens": s * 1000, "train_loss": 6 / s} for s in range(1, 30)]
    records += [
        {"step": 10, "tokens": 10_000, "val_loss": 1.0, "val_bpb": 0.9},
        {"step": 29, "unigram_bpb": 2.0},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    plot_losses(path, tmp_path / "loss.png", title="test")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
