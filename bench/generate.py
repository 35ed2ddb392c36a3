"""Generation speed: forge's engine vs `transformers` `generate()` on the same weights, in one run.

Both engines get the same Llama weights (forge's model exported with `forge.model.io.export_hf` and
loaded by `transformers.LlamaForCausalLM`), the same prompts, and generate exactly `--new-tokens` tokens
(end-of-sequence ignored), in float32 on the same device and threads. Cases: batch 1 greedy, batch 1
with temperature + top-p, batch 16 sampling; models `small` and `base`. Each case is timed `--repeats`
times after a warm-up, the engines taking turns, and the median is kept.

forge runs twice: eager, and with its decode step compiled (`compile_decode`, what `forge generate
--compile` uses; the sampling cases then also draw with the compiled sampler, `compiled_sample`). The
summary's speedups are the compiled engine's; the compile time (paid once per batch size and cache
length, in the warm-up) is reported beside them.

The roofline: decoding one token at batch 1 reads every weight once, so weights bytes × decode steps/s
is the memory bandwidth the engine achieves; it is compared with a copy bandwidth measured here (a large
tensor copy, bytes read + written per second) around each of `--rounds` generations on `base`, since a
shared machine's bandwidth moves from minute to minute (`roofline_rounds`). The decode rate is the
engine's own (`tokens_per_s` of a `Generation`: the decode steps after the first, prefill excluded,
Python between steps included). Beside the copy, each round also times the model's weight matrices
alone, each multiplied by one vector in eager PyTorch (`matmul_stream`): the rate at which this
machine's matrix-vector kernels read those bytes, with nothing else in a step. On some machines a
copy streams faster than the read-only kernels tried (a sum, these products), so the copy is the
stricter yardstick and stays the summary's; the stream says how much of the gap to it is the step's
own overhead.

    python bench/generate.py [--models small,base] [--new-tokens 128] [--rounds 9] [--device cpu]
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from forge.infer.batch import generate_batch
from forge.infer.engine import DecodeFn, compile_decode, generate_ids
from forge.infer.sampling import SamplingConfig
from forge.model.config import model_preset
from forge.model.io import export_hf
from forge.model.transformer import Transformer
from forge.runtime import available_cores, resolve_device

RESULTS = Path(__file__).resolve().parent / "results" / "generate.json"
VOCAB = 8192
PROMPT_LEN = 32


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_seconds(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int
) -> dict[str, tuple[float, float]]:
    """For each fn: the median seconds of `repeats` runs and the seconds of its warm-up run (it compiles,
    when fn uses a compiled step). The timed runs take turns (a, b, c, a, b, c, ...), so a minute when a
    shared machine is slower weighs on every engine alike."""
    warmups = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        warmups[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), warmups[name]) for name in fns}


def copy_bandwidths(device: torch.device, copies: int = 5, megabytes: int = 512) -> list[float]:
    """Bytes per second of each of `copies` large tensor copies (read + write)."""
    a = torch.empty(megabytes << 18, dtype=torch.float32, device=device).uniform_()
    b = torch.empty_like(a)
    rates = []
    for _ in range(copies):
        _sync(device)
        start = time.perf_counter()
        b.copy_(a)
        _sync(device)
        rates.append(2 * a.numel() * a.element_size() / (time.perf_counter() - start))
    return rates


def matmul_stream(weights: list[torch.Tensor], device: torch.device, repeats: int = 3) -> float:
    """Bytes per second at which batch-1 matrix-vector products read `weights` (median of `repeats`)."""
    vectors = [torch.ones(1, w.shape[1], dtype=w.dtype, device=device) for w in weights]
    total = sum(w.numel() * w.element_size() for w in weights)
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            for w, v in zip(weights, vectors, strict=True):
                torch.nn.functional.linear(v, w)
            _sync(device)
            times.append(time.perf_counter() - start)
    return total / statistics.median(times)


def roofline_rounds(
    model: Transformer, decode_fn: DecodeFn, prompt: list[int], new: int, device: torch.device, rounds: int,
    weight_bytes: int,
) -> dict:  # fmt: skip
    """The fraction of copy bandwidth that batch-1 greedy decoding reads weights at, measured in rounds.

    A machine shared with other work does not keep one memory bandwidth: on 2 cores of a shared host the
    copy rate was seen to move between 38 and 79 GB/s within a minute. So each round measures the copy
    rate right before and right after one generation (the median of 3 copies each side) and divides the
    generation's decode rate by their mean; the summary takes the median round. Both sides are typical
    rates over the same stretch of time: a best-of-N copy, against a decode rate averaged over 128
    steps, would compare the machine's quietest moment with an ordinary one (kept beside it, for reference).
    """
    config = SamplingConfig(temperature=0, max_new_tokens=new, stop_on_eos=False)
    matrices = [p.detach() for p in model.parameters() if p.dim() == 2]
    fractions, fractions_best, copy_rates, decode_rates = [], [], [], []
    stream_rates, fractions_stream = [], []
    for _ in range(rounds):
        stream_before = matmul_stream(matrices, device)
        before = copy_bandwidths(device, copies=3)
        generation = generate_ids(model, prompt, config, decode_fn=decode_fn)
        assert len(list(generation)) == new
        after = copy_bandwidths(device, copies=3)
        stream_rate = (stream_before + matmul_stream(matrices, device)) / 2
        copy_rate = (statistics.median(before) + statistics.median(after)) / 2
        achieved = weight_bytes * generation.tokens_per_s
        fractions.append(achieved / copy_rate)
        fractions_best.append(achieved / max(before + after))
        fractions_stream.append(achieved / stream_rate)
        copy_rates.append(copy_rate)
        stream_rates.append(stream_rate)
        decode_rates.append(generation.tokens_per_s)
    return {
        "fraction_median": round(statistics.median(fractions), 3),
        "fraction_vs_best_copy_median": round(statistics.median(fractions_best), 3),
        "fraction_vs_matmul_stream_median": round(statistics.median(fractions_stream), 3),
        "fractions": [round(f, 3) for f in fractions],
        "copy_gb_s": [round(r / 1e9, 1) for r in copy_rates],
        "matmul_stream_gb_s": [round(r / 1e9, 1) for r in stream_rates],
        "decode_tokens_per_s": [round(r, 1) for r in decode_rates],
        "weights_gb_s": [round(weight_bytes * r / 1e9, 1) for r in decode_rates],
    }


def cpu_model() -> str:
    """The processor's name as Linux reports it ("" where it does not): results differ by machine."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")


def cache_size(level: int) -> str:
    """The size of the first CPU's cache of this level as Linux reports it, e.g. "32768K" ("" if none)."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        if (index / "level").read_text().strip() == str(level):
            return (index / "size").read_text().strip()
    return ""


def run_model(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    import transformers

    torch.manual_seed(0)
    ours = Transformer(model_preset(name, vocab_size=VOCAB)).to(device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(ours, tmp)
        theirs = (
            transformers.LlamaForCausalLM.from_pretrained(tmp, torch_dtype=torch.float32).to(device).eval()
        )
    generator = torch.Generator().manual_seed(1)
    prompts = torch.randint(10, VOCAB, (16, PROMPT_LEN), generator=generator)
    new = args.new_tokens
    cases = {
        "batch1_greedy": (1, SamplingConfig(temperature=0, max_new_tokens=new, stop_on_eos=False)),
        "batch1_sampling": (1, SamplingConfig(temperature=0.8, top_p=0.95, max_new_tokens=new, seed=0,
                                              stop_on_eos=False)),
        "batch16": (16, SamplingConfig(temperature=0.8, top_p=0.95, max_new_tokens=new, seed=0,
                                       stop_on_eos=False)),
    }  # fmt: skip
    compiled = compile_decode(ours)
    results = {}
    for case, (batch, config) in cases.items():
        prompt_rows = prompts[:batch]
        decode_rates: dict[bool, list[float]] = {False: [], True: []}  # compiled? → decode-only tok/s

        def forge_run(
            rows: torch.Tensor = prompt_rows,
            config: SamplingConfig = config,
            decode_fn: DecodeFn | None = None,
            decode_rates: dict[bool, list[float]] = decode_rates,
        ) -> None:
            if len(rows) == 1:
                generation = generate_ids(ours, rows[0].tolist(), config, decode_fn=decode_fn)
                assert len(list(generation)) == new
                decode_rates[decode_fn is not None].append(generation.tokens_per_s)
            else:
                done = generate_batch(ours, rows.tolist(), config, decode_fn=decode_fn)
                assert all(len(c.token_ids) == new for c in done)

        def hf_run(rows: torch.Tensor = prompt_rows, config: SamplingConfig = config) -> None:
            sampling: dict[str, object] = {"do_sample": False}
            if not config.greedy:
                sampling = {
                    "do_sample": True,
                    "temperature": config.temperature,
                    "top_p": config.top_p,
                    "top_k": 0,
                }
            with torch.inference_mode():
                out = theirs.generate(
                    rows.to(device),
                    attention_mask=torch.ones_like(rows).to(device),
                    max_new_tokens=new,
                    min_new_tokens=new,
                    pad_token_id=0,
                    **sampling,
                )
            assert out.shape[1] == PROMPT_LEN + new

        timed = _median_seconds(
            {"eager": forge_run, "compiled": lambda: forge_run(decode_fn=compiled), "theirs": hf_run},
            device,
            args.repeats,
        )
        (eager_s, _), (ours_s, compile_s), (theirs_s, _) = timed["eager"], timed["compiled"], timed["theirs"]
        tokens = batch * new
        results[case] = {
            "forge_tokens_per_s": round(tokens / ours_s, 1),
            "forge_eager_tokens_per_s": round(tokens / eager_s, 1),
            "transformers_tokens_per_s": round(tokens / theirs_s, 1),
            "speedup": round(theirs_s / ours_s, 3),
            "speedup_eager": round(theirs_s / eager_s, 3),
            "first_run_seconds_compiled": round(compile_s, 1),
        }
        if batch == 1:  # the engine's own rate over decode steps (prefill excluded), median of timed runs
            decode_rate = statistics.median(decode_rates[True][-args.repeats :])
            results[case]["forge_decode_tokens_per_s"] = round(decode_rate, 1)
        print(
            f"{name:>6} {case:<16} forge compiled {tokens / ours_s:8.1f} tok/s "
            f"(first run {compile_s:.0f} s) | "
            f"eager {tokens / eager_s:8.1f} | transformers {tokens / theirs_s:8.1f} tok/s | "
            f"speedup {theirs_s / ours_s:.2f}x (eager {theirs_s / eager_s:.2f}x)",
            flush=True,
        )
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    results["weights_bytes"] = weight_bytes
    if name == "base":
        first = prompts[0].tolist()
        results["roofline"] = roofline_rounds(ours, compiled, first, new, device, args.rounds, weight_bytes)
    results["parameters"] = sum(p.numel() for p in ours.parameters())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="small,base", help="comma-separated model presets")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per sequence")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (median kept)")
    parser.add_argument("--rounds", type=int, default=9, help="roofline rounds on base (median kept)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = the cores available)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or available_cores())
    device = resolve_device(args.device)
    bandwidth = max(copy_bandwidths(device))
    print(f"device {device}, {torch.get_num_threads()} threads, copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    models = {name: run_model(name, args, device) for name in args.models.split(",")}
    summary = {}
    if "small" in models:
        summary |= {f"speedup_{case}_small": models["small"][case]["speedup"]
                    for case in ("batch1_greedy", "batch1_sampling", "batch16")}  # fmt: skip
    if "base" in models:
        roofline = models["base"]["roofline"]
        summary["roofline_fraction_base"] = roofline["fraction_median"]
        summary["roofline_fraction_base_vs_best_copy"] = roofline["fraction_vs_best_copy_median"]
        summary["roofline_fraction_base_vs_matmul_stream"] = roofline["fraction_vs_matmul_stream_median"]
        print(
            f"base at batch 1 reads weights at {statistics.median(roofline['weights_gb_s']):.1f} GB/s over "
            f"decode steps (median of {len(roofline['fractions'])} rounds) = "
            f"{100 * roofline['fraction_median']:.0f}% of the copy bandwidth measured around each round "
            f"({100 * roofline['fraction_vs_best_copy_median']:.0f}% of the best copy; rounds: "
            f"{', '.join(f'{f:.2f}' for f in roofline['fractions'])}); its bare matrix-vector products "
            f"read them at {statistics.median(roofline['matmul_stream_gb_s']):.1f} GB/s "
            f"({100 * roofline['fraction_vs_matmul_stream_median']:.0f}% of that)"
        )
    result = {
        "summary": summary,
        "models": models,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cores": available_cores(),
        "copy_bandwidth_gb_s_at_start": round(bandwidth / 1e9, 2),
        "new_tokens": args.new_tokens,
        "prompt_tokens": PROMPT_LEN,
        "torch": torch.__version__,
        "cpu": os.uname().machine,
        "cpu_model": cpu_model(),
        "l3_cache": cache_size(3),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
