"""Shared test settings: one torch process, threads bounded by the cores we may use."""

import os

import pytest
import torch

from forge.runtime import available_cores

torch.set_num_threads(min(2, available_cores()))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
