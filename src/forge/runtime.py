"""Process-wide runtime settings: threads, device and seeds.

torch on a few shared cores oversubscribes easily, so the thread count defaults to the cores this
process may actually run on (its CPU affinity), not the machine's core count, and can be set by the user.
"""

import os
import random

import numpy as np
import torch

from forge.errors import ConfigError


def available_cores() -> int:
    """Cores this process may run on (respects affinity masks and container CPU sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (default: available cores); returns the number set."""
    n = available_cores() if threads in (None, 0) else threads
    if n is None or n < 1:
        raise ConfigError(f"--threads must be a positive integer, got {threads}")
    torch.set_num_threads(n)
    return n


def resolve_device(device: str = "auto") -> torch.device:
    """Turn 'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps' into a torch.device, checking it exists."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} was asked for but CUDA is not available; use --device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps was asked for but MPS is not available; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"--device {device!r} is not a device torch knows ({e}); use cpu or cuda") from e


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
