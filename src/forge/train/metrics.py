"""Training metrics: one JSON object per line in `metrics.jsonl`, and the loss plot drawn from it."""

import json
import math
from pathlib import Path
from typing import Any

from forge.io import write_with


class MetricsLog:
    """Append-only `metrics.jsonl`; each record is flushed so a crash loses nothing already logged."""

    def __init__(self, path: str | Path, *, truncate_after_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after_step is not None and self.path.exists():
            # on resume, drop records written after the checkpoint we resume from: they will be redone
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= truncate_after_step]
            text = "".join(json.dumps(r) + "\n" for r in kept)
            write_with(self.path, lambda tmp: None if tmp.write_text(text) else None)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def log(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read `metrics.jsonl`, skipping a torn last line left by a crash."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_losses(metrics_path: str | Path, out_path: str | Path, *, title: str = "") -> None:
    """Draw train loss and validation loss / bits per byte against tokens seen, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if "train_loss" in r]
    val = [r for r in records if "val_loss" in r]
    fig, (ax_loss, ax_bpb) = plt.subplots(1, 2, figsize=(11, 4.2))
    if train:
        xs = [r["tokens"] / 1e6 for r in train]
        ax_loss.plot(xs, [r["train_loss"] for r in train], label="train", color="#4c72b0", lw=1.2)
    periodic = [r for r in val if not r.get("val_final")]
    final = [r for r in val if r.get("val_final")]
    for ax, key, color in ((ax_loss, "val_loss", "#dd8452"), (ax_bpb, "val_bpb", "#55a868")):
        if periodic:
            xs, ys = [r["tokens"] / 1e6 for r in periodic], [r[key] for r in periodic]
            ax.plot(xs, ys, "o-", color=color, ms=4, label="validation (periodic, subset)")
        if final:
            xs, ys = [r["tokens"] / 1e6 for r in final], [r[key] for r in final]
            ax.plot(xs, ys, "*", color=color, ms=12, label="validation (final, whole split)")
    if val:
        unigram = next((r["unigram_bpb"] for r in reversed(records) if "unigram_bpb" in r), None)
        if unigram is not None and math.isfinite(unigram):
            ax_bpb.axhline(unigram, ls="--", color="gray", label=f"unigram baseline ({unigram:.2f})")
    ax_loss.set(xlabel="tokens seen (millions)", ylabel="cross-entropy (nats/token)", title="loss")
    ax_bpb.set(xlabel="tokens seen (millions)", ylabel="bits per byte", title="validation bits per byte")
    for ax in (ax_loss, ax_bpb):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    write_with(out_path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
