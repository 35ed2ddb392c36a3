"""Checkpoints that resume exactly and survive crashes.

A checkpoint is a directory `checkpoints/step-0000100/` holding the model, the optimizer state (keyed by
parameter name and unsharded, so a run saved by N processes resumes in M) and the RNG states as
safetensors (nothing is pickled, so loading a checkpoint never runs code), `state.json` (step,
data-loader position, elapsed time, counters) and `manifest.json` with a sha256 per file. It is written to
a temporary directory and renamed into place; the `latest` pointer is updated last, so a crash at any
moment leaves the previous checkpoint intact. Loading verifies the checksums and falls back to the newest
earlier checkpoint that verifies, saying so.
"""

import hashlib
import json
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from forge.errors import CheckpointError
from forge.io import atomic_dir, write_json, write_text
from forge.train.distributed import World, barrier, full_state, load_full_state, unwrap

FORMAT_VERSION = 2  # 2: optimizer state keyed by parameter name (1: by index)
OPTIM_SEPARATOR = "::"  # optimizer tensors are saved as 'parameter.name::exp_avg'


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    state = optimizer.state_dict()
    tensors = {
        f"{index}.{name}": value.detach().cpu().contiguous()
        for index, param_state in state["state"].items()
        for name, value in param_state.items()
    }
    return tensors, state["param_groups"]


def _load_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_initialized():  # a run on CUDA; a CPU run on a GPU machine leaves the GPUs alone
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    np_state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]
    py_state = random.getstate()
    plain = {
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return tensors, plain


def _device_index(key: str) -> int:
    return int(key.removeprefix("cuda."))  # "cuda.10" after "cuda.9", not before "cuda.2"


def _restore_rng(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=_device_index)]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, *rest = plain["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(
    run_dir: str | Path,
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep_last: int = 3,
    world: World | None = None,
    protect: tuple[int, ...] = (),
) -> Path:
    """Write `checkpoints/step-N/` atomically, point `latest` at it, prune to the newest `keep_last`
    (the checkpoints of the steps in `protect` are never pruned).

    In a distributed run every rank must call this (the states are gathered); rank 0 writes.
    """
    world = world or World()
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:07d}"
    model_state, optim_state = full_state(model, optimizer)
    if world.is_main:
        _write_checkpoint(final, step, unwrap(model), model_state, optim_state, state)
    barrier(world)
    if keep_last > 0 and world.is_main:
        kept = {f"step-{s:07d}" for s in protect}
        for old in list_checkpoints(run_dir)[:-keep_last]:
            if old.name not in kept:
                shutil.rmtree(old, ignore_errors=True)
    barrier(world)
    return final


def _write_checkpoint(
    final: Path,
    step: int,
    model: nn.Module,
    model_state: dict[str, Any],
    optim_state: dict[str, Any],
    state: dict[str, Any],
) -> None:
    weights = {name: t.detach().cpu().contiguous() for name, t in model_state.items()}
    if getattr(getattr(model, "config", None), "tie_embeddings", False):
        weights.pop("lm_head.weight", None)  # the same tensor as the embedding; restored on load
    opt_tensors = {
        f"{name}{OPTIM_SEPARATOR}{key}": value.detach().cpu().contiguous()
        for name, param_state in optim_state["state"].items()
        for key, value in param_state.items()
    }
    rng_tensors, rng_plain = _rng_state()
    with atomic_dir(final) as tmp:
        save_file(weights, str(tmp / "model.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        write_json(tmp / "state.json", {"format": FORMAT_VERSION, "step": step, "rng": rng_plain, **state})
        write_json(tmp / "optimizer_groups.json", optim_state["param_groups"])
        files = sorted(p.name for p in tmp.iterdir())
        write_json(tmp / "manifest.json", {"step": step, "sha256": {n: _sha256(tmp / n) for n in files}})
    write_text(final.parent / "latest", final.name + "\n")


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint directories of a run, oldest first (temporary and partial ones excluded)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))


def verify_checkpoint(path: Path) -> str | None:
    """Return None if every file matches its checksum, else what is wrong."""
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        return "manifest.json is missing (half-written checkpoint)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        return "manifest.json is not valid JSON"
    for name, digest in manifest["sha256"].items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if _sha256(file) != digest:
            return f"{name} does not match its checksum"
    return None


def find_resumable(run_dir: str | Path) -> Path | None:
    """The newest checkpoint that verifies, preferring the one `latest` points to; warn about bad ones."""
    candidates = list_checkpoints(run_dir)
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if pointer.is_file():
        named = pointer.parent / pointer.read_text().strip()
        if named in candidates:
            candidates.remove(named)
            candidates.append(named)
    for path in reversed(candidates):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        print(f"warning: skipping checkpoint {path}: {problem}", file=sys.stderr)
    return None


def load_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, optimizer and RNG states from `path`; return its state.json. Every rank of a
    distributed run calls it (each reads the files; FSDP keeps its own shard)."""
    state = json.loads((path / "state.json").read_text())
    weights = load_file(str(path / "model.safetensors"))
    inner = unwrap(model)
    if getattr(getattr(inner, "config", None), "tie_embeddings", False) and "lm_head.weight" not in weights:
        weights["lm_head.weight"] = weights.get("model.embed_tokens.weight", torch.empty(0))
    expected = set(inner.state_dict())
    if set(weights) != expected:
        missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise CheckpointError(
            f"{path}: checkpoint and model disagree (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "resume with the same model options the run was started with"
        )
    groups = json.loads((path / "optimizer_groups.json").read_text())
    tensors = load_file(str(path / "optimizer.safetensors"))
    if state.get("format", 1) == 1:  # optimizer state keyed by index: one process only
        try:
            inner.load_state_dict(weights)
        except RuntimeError as e:
            raise CheckpointError(
                f"{path}: model weights do not fit this model ({e}); check --model.*"
            ) from e
        _load_optimizer(optimizer, tensors, groups)
    else:
        optim_state: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            name, field = key.rsplit(OPTIM_SEPARATOR, 1)
            optim_state.setdefault(name, {})[field] = value
        try:
            load_full_state(model, optimizer, weights, {"state": optim_state, "param_groups": groups})
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(
                f"{path}: the checkpoint does not fit this model ({e}); check --model.*"
            ) from e
    _restore_rng(load_file(str(path / "rng.safetensors")), state.pop("rng"))
    return state
