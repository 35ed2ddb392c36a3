"""Fine-tuning on the synthetic standard-library instructions: full SFT against LoRA, in one run.

Both runs start from the same pretrained base (default: the demo's run, `demo_out/runs/small`; `make
demo` makes it), read the same conversations (`forge data synth-sft`: "write this function" and "what
does this do" from the standard library, whole modules held out), and train for the same steps, batch
and sequence length. The yardstick is the loss on the assistant tokens of the held-out conversations,
measured on the base model first and on each fine-tuned model after: `sft_loss_reduction` is full SFT's
relative reduction; `lora_gain_fraction_of_full` is LoRA's reduction (rank 16, every linear layer of
the blocks) as a fraction of full SFT's; `lora_trainable_fraction` the share of weights LoRA trains.
Forgetting, the change in bits per byte on the base model's own validation data, is reported beside.
Learning rates are swept (`--full-lrs`, `--lora-lrs`, comma-separated; adapters start at zero and are
scaled by alpha/rank, so LoRA wants a rate several times full fine-tuning's), and so is LoRA+'s ratio of
B's rate over A's (`--lora-lrs 1e-3:16`; plain LoRA has ratio 1). The sweep is scored on this
same held-out set, so the summary's best rates (`full_lr`, `lora_lr`) are tuned on it: it says so, and
lists every run's reduction. `--reuse` reads runs already finished under `--out` instead of repeating them.

    python bench/sft.py [--base demo_out/runs/small] [--data demo_out/sft] [--steps 1200] [--reuse]
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from forge.model.lora import LoraConfig
from forge.runtime import available_cores
from forge.train.sft import SftConfig, sft

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "sft.json"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default=str(ROOT / "demo_out" / "runs" / "small"), help="pretrained run")
    parser.add_argument("--data", default=str(ROOT / "demo_out" / "sft"), help="synth-sft output directory")
    parser.add_argument("--out", default=str(ROOT / "demo_out" / "bench_sft"), help="where the runs go")
    parser.add_argument("--steps", type=int, default=1200, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per step")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank")
    parser.add_argument("--full-lrs", default="3e-4,1e-3", help="full SFT learning rates, comma-separated")
    parser.add_argument("--lora-lrs", default="4e-3,8e-3,1e-3:16",
                        help="LoRA runs, comma-separated: LR for plain LoRA, LR:RATIO for LoRA+")  # fmt: skip
    parser.add_argument("--reuse", action="store_true", help="read runs already finished under --out")
    parser.add_argument("--results", default=str(RESULTS), help="where the JSON results go")
    args = parser.parse_args()
    base, data, out = Path(args.base), Path(args.data), Path(args.out)
    if not (base / "model.safetensors").is_file():
        sys.exit(f"{base} holds no model: run `make demo` first, or pass --base RUN_DIR")
    if not (data / "train.jsonl").is_file():
        subprocess.run(
            [sys.executable, "-m", "forge.cli.main", "data", "synth-sft", "--out", str(data)], check=True
        )
    common = {"base": str(base), "data": str(data / "train.jsonl"), "max_steps": args.steps,
              "batch_size": args.batch_size, "eval_every": 0, "checkpoint_every": 0, "log_every": 25,
              "threads": available_cores()}  # fmt: skip
    runs = {}
    for lr in (float(lr) for lr in args.full_lrs.split(",")):
        runs[f"full_lr{lr:g}"] = SftConfig(out=str(out / f"full_lr{lr:g}"), lr=lr, **common)
    for spec in args.lora_lrs.split(","):
        lr, ratio = float(spec.partition(":")[0]), float(spec.partition(":")[2] or 1)
        adapter = LoraConfig(rank=args.rank, alpha=2.0 * args.rank, targets=("all-linear",), lr_ratio=ratio)
        name = f"lora_lr{lr:g}" + ("" if ratio == 1 else f"_plus{ratio:g}")
        runs[name] = SftConfig(out=str(out / name), lr=lr, lora=True, adapter=adapter, **common)
    results = {}
    for name, config in runs.items():
        done = Path(config.out) / "summary.json"
        if args.reuse and done.is_file() and json.loads(done.read_text()).get("steps") == args.steps:
            summary = json.loads(done.read_text())
            summary["seconds"] = round(60 * summary["wall_minutes"], 1)
            print(f"{name}: reusing {done}")
        else:
            start = time.perf_counter()
            summary = sft(config)
            summary["seconds"] = round(time.perf_counter() - start, 1)
        results[name] = summary
        before, after = summary["val_loss_before"], summary["val_loss_after"]
        print(f"{name}: held-out assistant loss {before:.4f} → {after:.4f} "
              f"({100 * summary['val_loss_reduction']:.1f}% lower), "
              f"{100 * summary['trainable_fraction']:.2f}% of weights trained, "
              f"forgetting {summary.get('forgetting_bpb')} bits/byte, "
              f"{summary['seconds']:.0f} s", flush=True)  # fmt: skip
    # with several learning rates this is a sweep on the held-out set itself: the summary says which won
    reductions = {name: run["val_loss_reduction"] for name, run in results.items()}
    full_name = max((n for n in results if n.startswith("full")), key=reductions.__getitem__)
    full = results[full_name]
    full_gain = full["val_loss_before"] - full["val_loss_after"]
    fractions = {
        name: round((run["val_loss_before"] - run["val_loss_after"]) / full_gain, 4)
        for name, run in results.items()
        if name.startswith("lora")
    }
    best = max(fractions, key=fractions.__getitem__)
    lora = results[best]
    summary = {
        "sft_loss_reduction": full["val_loss_reduction"],
        "lora_gain_fraction_of_full": fractions[best],
        "lora_trainable_fraction": lora["trainable_fraction"],
        "full_lr": runs[full_name].lr,
        "lora_lr": runs[best].lr,
        "lora_lr_ratio": runs[best].adapter.lr_ratio,
        "sft_loss_reduction_by_run": reductions,
        "lora_gain_fraction_by_run": fractions,
        "forgetting_bpb_full": full.get("forgetting_bpb"),
        "forgetting_bpb_lora": lora.get("forgetting_bpb"),
    }
    results_path = Path(args.results)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"summary": summary, "runs": results, "steps": args.steps, "batch_size": args.batch_size,
               "base": str(base.resolve()), "data": str(data.resolve())}  # fmt: skip
    results_path.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
