"""A real `forge serve` process on a loopback port, shared by the server tests of one module."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from forge.model.config import ModelConfig
from forge.model.io import save_model
from forge.model.transformer import Transformer
from forge.serve.launch import ServerProcess
from forge.tokenizer.bpe import TokenizerConfig, train_tokenizer

API_KEY = "test-key-not-a-secret"
MODEL = "tiny-run"
TEXT = "the quick brown fox jumps over the lazy dog; hello world, how are you today? fine, thanks. " * 40


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


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    run = make_run(tmp_path_factory.mktemp("serve"))
    args = ["--api-key", API_KEY, "--max-batch", "4", "--max-queue", "2", "--max-body-bytes", "20000",
            "--threads", "1", "--model-name", MODEL]  # fmt: skip
    server = ServerProcess(run, args, timeout=60)
    yield server
    server.stop()
