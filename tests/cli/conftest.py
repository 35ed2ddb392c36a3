"""Fixtures of the CLI tests."""

from pathlib import Path

import pytest
from test_cli import _write_corpus

from forge.cli.main import main


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Token shards of a small synthetic corpus (prepared, tokenizer trained, tokenized once per session)."""
    root = tmp_path_factory.mktemp("tiny-shards")
    docs, tok, out = root / "docs", root / "tok", root / "shards"
    assert main(["data", "prepare", str(_write_corpus(root)), "--out", str(docs)]) == 0
    assert main(["tokenizer", "train", str(docs), "--out", str(tok), "--vocab-size", "320"]) == 0
    argv = ["data", "tokenize", str(docs), "--tokenizer", str(tok), "--out", str(out), "--num-workers", "1"]
    assert main([*argv, "--val-fraction", "0.2"]) == 0
    return out
