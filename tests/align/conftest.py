"""Shared fixtures of the alignment tests: a tiny model shape, preference pairs that one token separates,
a tokenizer for them and a base run directory."""

from pathlib import Path

import pytest
import torch
from tiny_prefs import CONFIG, preference_pairs

from forge.model.io import save_model
from forge.model.transformer import Transformer
from forge.tokenizer.bpe import Tokenizer, TokenizerConfig, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    texts = [" ".join(pair.values()) for pair in preference_pairs()] * 5
    return train_tokenizer(texts, TokenizerConfig(vocab_size=300))


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> Path:
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("base")
    save_model(Transformer(CONFIG), run)
    tokenizer.save(run / "tokenizer")
    return run
