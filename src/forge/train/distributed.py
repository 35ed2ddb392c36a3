"""Data-parallel training through `torchrun`: DDP or FSDP2 (`fully_shard`), on PyTorch's own engine.

Design choices:
- the process group comes from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); gloo on CPU (so
  tests run anywhere), NCCL on CUDA with one device per local rank. Without torchrun, everything here is
  a no-op and the model is returned as it is;
- `--parallel ddp` replicates the model and all-reduces gradients; `--parallel fsdp` shards parameters,
  gradients and optimizer state with FSDP2, each transformer block its own unit, then the root;
- each rank reads its own rows of the global batch (`BatchLoader(rank, world_size)`), so N processes
  with batch B each see exactly the batches of one process with batch N·B: the loss trajectories match;
- gradient accumulation skips the gradient sync on all but the last micro-batch (`no_sync` for DDP,
  `set_requires_gradient_sync` for FSDP);
- checkpoints gather to full (unsharded) state dicts with `torch.distributed.checkpoint.state_dict`,
  and rank 0 writes them in the one checkpoint format: a run saved with N processes resumes with M,
  single-process included. Gather-to-rank-0 rather than `torch.distributed.checkpoint`'s sharded files
  because it keeps one format, readable without a process group, and the models this toolkit trains fit
  in one host's memory; sharded saving is the path for models that do not;
- every rank evaluates the same validation batches (FSDP needs all ranks in each forward); rank 0 alone
  logs, plots, writes and prints.
"""

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from forge.errors import ConfigError

PARALLEL_MODES = ("ddp", "fsdp")


@dataclass(frozen=True)
class World:
    """Where this process stands: rank, number of processes, local rank, and the parallel mode."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    mode: str = "ddp"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(mode: str, device: torch.device) -> tuple[World, torch.device]:
    """Join torchrun's process group (when launched by torchrun) and pick this rank's device."""
    if mode not in PARALLEL_MODES:
        raise ConfigError(f"--parallel must be one of {', '.join(PARALLEL_MODES)}, got {mode!r}")
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(mode=mode), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"torchrun started process {local_rank} on this node but it has "
                f"{torch.cuda.device_count()} CUDA device(s), one per process: set --nproc-per-node to "
                "at most that, or train these processes on the CPU with --device cpu"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(rank, size, local_rank, mode), device


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """The model as trained by this rank: itself, DDP-wrapped, or sharded in place by FSDP2."""
    if not world.distributed:
        return model
    if world.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard

    for block in model.model.layers:  # type: ignore[union-attr]
        fully_shard(block)
    fully_shard(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The transformer inside `torch.compile` and DDP wrappers (FSDP2 shards in place, no wrapper)."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


@contextlib.contextmanager
def gradient_sync(model: nn.Module, world: World, enabled: bool) -> Iterator[None]:
    """Within the block, backward passes sync gradients across ranks only if `enabled` (the last
    micro-batch of an accumulation)."""
    if not world.distributed or enabled:
        if world.distributed and world.mode == "fsdp":
            model.set_requires_gradient_sync(True)  # type: ignore[operator]
        yield
    elif world.mode == "ddp":
        with model.no_sync():  # type: ignore[operator]
            yield
    else:
        model.set_requires_gradient_sync(False)  # type: ignore[operator]
        yield


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """Unsharded model and optimizer state dicts on the CPU, keyed by parameter name (collective: every
    rank must call it; all get the full dicts)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(unwrap(model), optimizer, options=options)


def load_full_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_state: dict[str, Any],
    optim_state: dict[str, Any],
) -> None:
    """Load full state dicts (as `full_state` returns) into a possibly sharded model and its optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(
        unwrap(model),
        optimizer,
        model_state_dict=model_state,
        optim_state_dict=optim_state,
        options=StateDictOptions(full_state_dict=True),
    )


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
