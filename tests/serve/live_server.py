"""A real `forge serve` process on a loopback port, shared by the server tests of one module."""

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from forge.model.config import ModelConfig
from forge.model.io import save_model
from forge.model.transformer import Transformer
from forge.tokenizer.bpe import TokenizerConfig, train_tokenizer

API_KEY = "test-key-not-a-secret"
TEXT = "the quick brown fox jumps over the lazy dog; hello world, how are you today? fine, thanks. " * 40


@dataclass
class LiveServer:
    url: str
    model: str
    process: subprocess.Popen


def make_run(root: Path) -> Path:
    """A run directory with a tiny random model and a tokenizer trained on a few sentences."""
    run = root / "tiny-run"
    tokenizer = train_tokenizer([TEXT], TokenizerConfig(vocab_size=300))
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size, context_length=256, dim=32, num_layers=2, num_heads=4, num_kv_heads=2
    )
    save_model(Transformer(config), run)
    tokenizer.save(run / "tokenizer")
    return run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    run = make_run(tmp_path_factory.mktemp("serve"))
    port = _free_port()
    argv = [
        sys.executable,
        "-m",
        "forge.cli.main",
        "serve",
        str(run),
        "--port",
        str(port),
        "--api-key",
        API_KEY,
        "--max-batch",
        "4",
        "--max-queue",
        "2",
        "--max-body-bytes",
        "20000",
        "--threads",
        "1",
    ]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            output = process.stdout.read() if process.stdout else ""
            raise RuntimeError(f"forge serve did not start:\n{output}")
        time.sleep(0.1)
    yield LiveServer(url, "tiny-run", process)
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


def metrics(url: str) -> dict[str, float]:
    """The server's /metrics as {name: value} (histogram buckets left out)."""
    values = {}
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.split()
            values[name] = float(value)
    return values
