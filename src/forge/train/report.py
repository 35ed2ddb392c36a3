"""`runs/NAME/report.md`: what a finished run was, on what, how fast, and how good, in one page."""

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from forge.io import write_text


def hardware(device: torch.device, threads: int, processes: int, peak_flops: float) -> dict[str, Any]:
    """What the run ran on (recorded in the report and the summary)."""
    info: dict[str, Any] = {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cores_available": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "threads": threads,
        "processes": processes,
        "peak_tflops_measured": round(peak_flops / 1e12, 4),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


def write_report(run_dir: Path, summary: dict[str, Any], config: dict[str, Any], data_dir: Path) -> Path:
    """Write `report.md` from the run's summary (with its `hardware`), config and data directory."""
    hw = summary.get("hardware", {})
    rows = [
        ("steps", f"{summary['steps']:,}"),
        ("tokens seen", f"{summary['tokens']:,}"),
        ("parameters", f"{summary['parameters']:,}"),
        ("training time", f"{summary['train_minutes']:.2f} min (wall {summary['wall_minutes']:.2f} min)"),
        ("throughput", f"{summary['tokens_per_s']:,.0f} tokens/s"),
        ("MFU", f"{100 * summary['mfu']:.1f}% of a measured {hw.get('peak_tflops_measured', '?')} TFLOP/s"),
        ("final validation loss", f"{summary['val_loss']:.4f}"),
        ("bits per byte", f"{summary['val_bpb']:.4f} (unigram baseline {summary['unigram_bpb']:.4f})"),
    ]
    if "init_from" in summary:
        rows.insert(0, ("initialised from", f"`{summary['init_from']}` (continued pretraining)"))
    if "original_domain" in summary:
        before, after = summary["original_domain"]["bpb_before"], summary["original_domain"]["bpb_after"]
        shown = "?" if before is None else f"{before:.4f}"
        rows.append(("original domain bits per byte", f"{shown} before → {after:.4f} after"))
    lines = [f"# Run report: {run_dir.name}", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines += ["", "![loss](loss.png)", "", "## Samples", ""]
    for prompt, text in summary.get("samples", {}).items():
        lines += [f"Prompt `{prompt!r}`:", "", "```", text, "```", ""]
    lines += [
        "## Data",
        "",
        f"- `{data_dir}`, `meta.json` sha256 `{file_sha256(data_dir / 'meta.json')}`",
        "",
    ]
    lines += ["## Hardware", ""] + [f"- {key}: {value}" for key, value in hw.items()] + [""]
    lines += ["## Config", "", "```json", json.dumps(config, indent=2), "```", ""]
    path = run_dir / "report.md"
    write_text(path, "\n".join(lines))
    return path
