"""Training speed: forge's training step vs `transformers.LlamaForCausalLM` of the same shape, in one run.

Both get the same weights (forge's model exported with `forge.model.io.export_hf`), the same batches,
the same AdamW settings (foreach, the same parameter groups) and the same autocast dtype, on the same
device and threads; a step is forward + backward + gradient clipping + optimizer step. forge runs eager
(its default) and compiled (`forge pretrain --compile`); the summary's speedups are forge's default,
eager, and the compiled figures sit beside them (on a CPU, compiling was measured not to help training).
Each case runs `--warmup` steps (compiling, for the compiled model), then `--steps` timed steps; tokens/s
is the median step's. MFU is against the matmul peak measured here in the same dtype (`forge bench-peak`).

bfloat16 on a CPU without bf16 instructions: torch's own bf16 matmul is emulated there (measured at about
1 GFLOP/s against 60-170 in float32), and `transformers` runs under plain `torch.autocast`, as its Trainer
does; forge's training loop uses `forge.train.precision.autocast`, which multiplies the bf16-rounded
operands in float32 on such a CPU. A fourth case, `transformers_forge_autocast`, runs transformers' model
under forge's autocast, to show how much of the bf16 speed-up is that route and how much the model. The
bf16 cases there use a smaller batch than the float32 ones so that the emulated runs finish in minutes;
elsewhere (a GPU, a CPU with bf16 instructions) every case has the float32 shape.

    python bench/train.py [--models small,base] [--dtypes float32,bfloat16]
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch
import torch.nn.functional as F

from forge.model.config import flops_per_token, model_preset
from forge.model.io import export_hf
from forge.model.transformer import Transformer
from forge.runtime import available_cores, resolve_device
from forge.train.mfu import measure_peak_flops, model_flops_utilization
from forge.train.optim import build_optimizer
from forge.train.precision import autocast, cpu_has_native_bf16

RESULTS = Path(__file__).resolve().parent / "results" / "train.json"
VOCAB = 8192
SHAPE = (8, 256)  # (batch, sequence length)
EMULATED_BF16_SHAPE = (2, 128)  # bf16 on a CPU without bf16 instructions: torch's matmul is emulated


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(
    step: Callable[[], None], device: torch.device, warmup: int, steps: int
) -> tuple[float, float]:
    """(median seconds per timed step, seconds of the warm-up steps)."""
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    warm = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), warm


def torch_autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def make_step(model: torch.nn.Module, logits_of: Callable, batch: torch.Tensor, dtype: torch.dtype | None,
              device: torch.device, precision: Callable = torch_autocast) -> Callable[[], None]:  # fmt: skip
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), device=device)
    x, y = batch[:, :-1].to(device), batch[:, 1:].to(device)

    def step() -> None:
        with precision(device, dtype):
            logits = logits_of(model, x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def forge_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def hf_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).logits


def run_case(name: str, dtype_name: str, args: argparse.Namespace, device: torch.device, peak: float) -> dict:
    import transformers

    dtype = {"float32": None, "bfloat16": torch.bfloat16}[dtype_name]
    emulated = dtype is not None and device.type == "cpu" and not cpu_has_native_bf16()
    batch_size, seq_len = EMULATED_BF16_SHAPE if emulated else SHAPE
    torch.manual_seed(0)
    config = model_preset(name, vocab_size=VOCAB)
    ours = Transformer(config).to(device).train()
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(ours, tmp)
        theirs = (
            transformers.LlamaForCausalLM.from_pretrained(tmp, torch_dtype=torch.float32).to(device).train()
        )
    compiled_model = Transformer(config).to(device).train()
    compiled_model.load_state_dict(ours.state_dict())
    batch = torch.randint(0, VOCAB, (batch_size, seq_len + 1), generator=torch.Generator().manual_seed(1))
    tokens = batch_size * seq_len
    runs = {
        "forge_compiled": make_step(
            torch.compile(compiled_model), forge_logits, batch, dtype, device, autocast
        ),
        "forge_eager": make_step(ours, forge_logits, batch, dtype, device, autocast),
        "transformers": make_step(theirs, hf_logits, batch, dtype, device),
    }
    if emulated:
        theirs_too = transformers.LlamaForCausalLM(theirs.config).to(device).train()
        theirs_too.load_state_dict(theirs.state_dict())
        runs["transformers_forge_autocast"] = make_step(theirs_too, hf_logits, batch, dtype, device, autocast)
    result: dict = {"batch_size": batch_size, "seq_len": seq_len, "parameters": ours.num_parameters()}
    per_token = flops_per_token(config, seq_len)
    for label, step in runs.items():
        warmup = args.warmup + (1 if label == "forge_compiled" else 0)
        seconds, warm = time_steps(step, device, warmup, args.steps)
        result[label] = {
            "tokens_per_s": round(tokens / seconds, 1),
            "step_seconds": round(seconds, 4),
            "warmup_seconds": round(warm, 1),
            "mfu": model_flops_utilization(per_token, tokens / seconds, peak),
        }
        mfu = 100 * result[label]["mfu"]
        print(f"{name:>6} {dtype_name:>8} {label:<15} {tokens / seconds:9.1f} tok/s  MFU {mfu:5.1f}%  "
              f"(warm-up {warm:.0f} s)", flush=True)  # fmt: skip
    theirs_tps = result["transformers"]["tokens_per_s"]
    result["speedup"] = round(result["forge_eager"]["tokens_per_s"] / theirs_tps, 3)
    result["speedup_compiled"] = round(result["forge_compiled"]["tokens_per_s"] / theirs_tps, 3)
    print(f"{name:>6} {dtype_name:>8} speedup {result['speedup']:.2f}x "
          f"(compiled {result['speedup_compiled']:.2f}x)")  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="small,base", help="comma-separated model presets")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="autocast dtypes to compare")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case (median kept)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed steps first (+1 for the compiled model)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = the cores available)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or available_cores())
    device = resolve_device(args.device)
    dtypes = args.dtypes.split(",")
    torch_dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    peaks = {d: measure_peak_flops(torch_dtypes[d], device, seconds=2) for d in dtypes}
    for d, flops in peaks.items():
        threads = torch.get_num_threads()
        print(f"measured matmul peak, {d}: {flops / 1e9:,.1f} GFLOP/s ({threads} threads, {device})")
    models = {n: {d: run_case(n, d, args, device, peaks[d]) for d in dtypes} for n in args.models.split(",")}
    summary = {}
    for n in models:
        if "bfloat16" in models[n]:
            summary[f"speedup_{n}_bf16"] = models[n]["bfloat16"]["speedup"]
        if "float32" in models[n]:
            summary[f"speedup_{n}_fp32"] = models[n]["float32"]["speedup"]
        # float32's, at the full batch shape; each case's own MFU, bf16 included, is in `models`
        mfu_dtype = "float32" if "float32" in models[n] else dtypes[0]
        summary[f"mfu_{n}"] = models[n][mfu_dtype]["forge_eager"]["mfu"]
    result = {
        "summary": summary,
        "models": models,
        "peak_gflops": {d: round(f / 1e9, 2) for d, f in peaks.items()},
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cores": available_cores(),
        "torch": torch.__version__,
        "cpu": os.uname().machine,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
