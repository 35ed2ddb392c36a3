"""Serving under load: continuous batching vs one request at a time, on the same model, in one run.

A `forge serve` process (loopback only) serves a `small` model (random weights: speed does not depend
on them) with a tokenizer trained on a slice of the standard library. Streaming clients, 1, 4, 16 and 64
at once, each send requests back to back (chat, 64 new tokens, `min_tokens` so every answer has the
same length). Measured per level: time to first token and inter-token latency (p50/p99), output
tokens/s, failed requests, corrupted streams (a chunk that is not JSON, a missing `[DONE]`, a wrong
token count or finish reason). The server runs once with `--max-batch 16` (continuous batching) and once
with `--max-batch 1` (one at a time). Then 500 requests whose clients disconnect after the first
tokens: the server's resident memory before and after, and its running slots afterwards.

    python bench/serve.py [--levels 1,4,16,64] [--new-tokens 64] [--disconnects 500]
"""

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import httpx

from forge.data.sources import iter_stdlib
from forge.model.config import model_preset
from forge.model.io import save_model
from forge.model.transformer import Transformer
from forge.serve.launch import ServerProcess
from forge.tokenizer.bpe import TokenizerConfig, train_tokenizer

RESULTS = Path(__file__).resolve().parent / "results" / "serve.json"
QUESTIONS = [
    "How do I read a file?",
    "What is a generator?",
    "Explain list comprehensions.",
    "How does sorting work?",
    "What does the os module do?",
    "Write a loop.",
]


def make_run(root: Path) -> Path:
    docs = zip(range(300), iter_stdlib(on_problem=lambda *_: None), strict=False)
    texts = [d.data.decode("utf-8", "replace") if isinstance(d.data, bytes) else d.data for _, d in docs]
    tokenizer = train_tokenizer(texts, TokenizerConfig(vocab_size=4096))
    run = root / "small"
    save_model(Transformer(model_preset("small", vocab_size=tokenizer.vocab_size)), run)
    tokenizer.save(run / "tokenizer")
    return run


def start_server(run: Path, max_batch: int, threads: int) -> ServerProcess:
    args = [
        "--max-batch",
        str(max_batch),
        "--max-queue",
        "256",
        "--threads",
        str(threads),
        "--model-name",
        "small",
    ]
    return ServerProcess(run, args)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one_request(
    http: httpx.AsyncClient, url: str, i: int, new_tokens: int, stop_after: int | None
) -> dict:
    """One streaming chat request; returns its timings and whether the stream was well formed."""
    body = {
        "model": "small",
        "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
        "max_tokens": new_tokens,
        "min_tokens": new_tokens,
        "temperature": 0.8,
        "seed": i,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    arrivals: list[float] = []
    ok, finish, usage, done = True, None, None, False
    try:
        async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                return {"failed": True, "corrupted": False}
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    continue
                try:
                    chunk = json.loads(data)
                except json.JSONDecodeError:
                    ok = False
                    continue
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk["choices"]:
                    if choice["delta"].get("content"):
                        arrivals.append(time.perf_counter())
                    finish = choice.get("finish_reason") or finish
                if stop_after is not None and len(arrivals) >= stop_after:
                    return {"failed": False, "corrupted": False, "disconnected": True}
    except httpx.HTTPError:
        return {"failed": True, "corrupted": False}
    tokens = usage["completion_tokens"] if usage else 0
    corrupted = not (ok and done and finish == "length" and tokens == new_tokens)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    ttft = arrivals[0] - start if arrivals else float("nan")
    return {"failed": False, "corrupted": corrupted, "ttft": ttft, "gaps": gaps, "tokens": tokens}


async def load_level(url: str, clients: int, requests_each: int, new_tokens: int) -> dict:
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:

        async def client(c: int) -> list[dict]:
            return [
                await one_request(http, url, c * 1000 + r, new_tokens, None) for r in range(requests_each)
            ]

        start = time.perf_counter()
        results = [r for batch in await asyncio.gather(*(client(c) for c in range(clients))) for r in batch]
        seconds = time.perf_counter() - start
    good = [r for r in results if not r["failed"]]
    ttfts = sorted(r["ttft"] for r in good)
    gaps = sorted(g for r in good for g in r["gaps"])

    def pct(values: list[float], q: float) -> float:
        return round(1000 * values[min(len(values) - 1, int(q * len(values)))], 1) if values else float("nan")

    return {
        "clients": clients,
        "requests": len(results),
        "seconds": round(seconds, 2),
        "output_tokens_per_s": round(sum(r["tokens"] for r in good) / seconds, 1),
        "ttft_p50_ms": pct(ttfts, 0.5),
        "ttft_p99_ms": pct(ttfts, 0.99),
        "itl_p50_ms": pct(gaps, 0.5),
        "itl_p99_ms": pct(gaps, 0.99),
        "failed_requests": sum(r["failed"] for r in results),
        "corrupted_streams": sum(r["corrupted"] for r in results),
    }


async def disconnects(url: str, total: int, new_tokens: int) -> int:
    """`total` streaming requests whose clients leave after two tokens, 16 at a time; returns failures."""
    failed = 0
    async with httpx.AsyncClient(timeout=120) as http:
        for wave in range(0, total, 16):
            results = await asyncio.gather(
                *(
                    one_request(http, url, i, new_tokens, stop_after=2)
                    for i in range(wave, min(wave + 16, total))
                )
            )
            failed += sum(r["failed"] for r in results)
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", default="1,4,16,64", help="concurrent clients, comma-separated")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens per answer")
    parser.add_argument("--disconnects", type=int, default=500, help="requests that disconnect mid-stream")
    parser.add_argument("--threads", type=int, default=0, help="server threads (0 = the cores available)")
    args = parser.parse_args()
    threads = args.threads or len(os.sched_getaffinity(0))
    levels = [int(x) for x in args.levels.split(",")]
    results: dict = {"levels": levels, "new_tokens": args.new_tokens, "server_threads": threads}
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp))
        for mode, max_batch in (("continuous_batching", 16), ("one_at_a_time", 1)):
            server = start_server(run, max_batch, threads)
            url = server.url
            try:
                asyncio.run(load_level(url, 2, 1, 8))  # warm-up
                rows = []
                for clients in levels:
                    each = max(1, min(4, 64 // clients))  # 4 requests per client at 1-16 clients, 1 at 64
                    row = asyncio.run(load_level(url, clients, each, args.new_tokens))
                    rows.append(row)
                    latency = (
                        f"TTFT p50 {row['ttft_p50_ms']} ms p99 {row['ttft_p99_ms']} ms, "
                        f"ITL p50 {row['itl_p50_ms']} ms p99 {row['itl_p99_ms']} ms"
                    )
                    print(
                        f"{mode:>20} {clients:>3} clients {row['output_tokens_per_s']:.1f} tok/s, {latency}, "
                        f"failed {row['failed_requests']}, corrupted {row['corrupted_streams']}",
                        flush=True,
                    )
                results[mode] = rows
                if mode == "continuous_batching":
                    asyncio.run(disconnects(url, 50, args.new_tokens))  # warm the allocator first
                    before = rss_mb(server.pid)
                    failed = asyncio.run(disconnects(url, args.disconnects, args.new_tokens))
                    time.sleep(1.0)
                    after = rss_mb(server.pid)
                    values = server.metrics()
                    results["disconnects"] = {
                        "requests": args.disconnects,
                        "failed": failed,
                        "rss_before_mb": round(before, 1),
                        "rss_after_mb": round(after, 1),
                        "slots_running_after": values["forge_slots_running"],
                        "requests_waiting_after": values["forge_requests_waiting"],
                        "cancelled_total": values["forge_requests_cancelled_total"],
                    }
                    print(f"disconnects: {results['disconnects']}", flush=True)
            finally:
                server.stop()
    at16 = {
        mode: next(r for r in results[mode] if r["clients"] == 16)
        for mode in ("continuous_batching", "one_at_a_time")
    }
    rows = results["continuous_batching"] + results["one_at_a_time"]
    results["summary"] = {
        "throughput_ratio_16_clients": round(
            at16["continuous_batching"]["output_tokens_per_s"] / at16["one_at_a_time"]["output_tokens_per_s"],
            2,
        ),
        "ttft_p50_ms_16_clients": at16["continuous_batching"]["ttft_p50_ms"],
        "itl_p99_ms_16_clients": at16["continuous_batching"]["itl_p99_ms"],
        "failed_requests": sum(r["failed_requests"] for r in rows) + results["disconnects"]["failed"],
        "corrupted_streams": sum(r["corrupted_streams"] for r in rows),
        "rss_growth_mb_after_disconnects": round(
            results["disconnects"]["rss_after_mb"] - results["disconnects"]["rss_before_mb"], 1
        ),
    }
    results["cpu"] = os.uname().machine
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))


if __name__ == "__main__":
    main()
