"""Fine-tuning on the synthetic standard-library instructions: full SFT against LoRA, in one run.

Both runs start from the same pretrained base (default: the demo's run, `demo_out/runs/small`; `make
demo` makes it), read the same conversations (`forge data synth-sft`: "write this function" and "what
does this do" from the standard library, whole modules held out), and train for the same steps, batch
and sequence length. The yardstick is the loss on the assistant tokens of the held-out conversations,
measured on the base model first and on each fine-tuned model after: `sft_loss_reduction` is full SFT's
relative reduction; `lora_gain_fraction_of_full` is LoRA's reduction (rank 16, every linear layer of
the blocks) as a fraction of full SFT's; `lora_trainable_fraction` the share of weights LoRA trains.
Forgetting, the change in bits per byte on the base model's own validation data, is reported beside.
Learning rates: full SFT 3e-4, LoRA 2e-3 (adapters start at zero and are scaled by alpha/rank; a LoRA
learning rate about 10x full fine-tuning's is the usual practice).

    python bench/sft.py [--base demo_out/runs/small] [--data demo_out/sft] [--steps 300]
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
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per step")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank")
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
    runs = {
        "full": SftConfig(out=str(out / "full"), lr=3e-4, **common),
        "lora": SftConfig(
            out=str(out / "lora"),
            lr=2e-3,
            lora=True,
            adapter=LoraConfig(rank=args.rank, alpha=2.0 * args.rank, targets=("all-linear",)),
            **common,
        ),  # fmt: skip
    }
    results = {}
    for name, config in runs.items():
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
    full, lora = results["full"], results["lora"]
    full_gain = full["val_loss_before"] - full["val_loss_after"]
    lora_gain = lora["val_loss_before"] - lora["val_loss_after"]
    summary = {
        "sft_loss_reduction": full["val_loss_reduction"],
        "lora_gain_fraction_of_full": round(lora_gain / full_gain, 4),
        "lora_trainable_fraction": lora["trainable_fraction"],
        "forgetting_bpb_full": full.get("forgetting_bpb"),
        "forgetting_bpb_lora": lora.get("forgetting_bpb"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {"summary": summary, "runs": results, "steps": args.steps, "batch_size": args.batch_size,
               "base": str(base.resolve()), "data": str(data.resolve())}  # fmt: skip
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
