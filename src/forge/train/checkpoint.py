"""Checkpoints that resume exactly and survive crashes.

A checkpoint is a directory `checkpoints/step-0000100/` holding the model, the optimizer state and the RNG
states as safetensors (nothing is pickled, so loading a checkpoint never runs code), `state.json` (step,
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
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from forge.errors import CheckpointError
from forge.io import atomic_dir, write_json, write_text

FORMAT_VERSION = 1


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
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    np_state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]
    py_state = random.getstate()
    plain = {
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return tensors, plain


def _restore_rng(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
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
) -> Path:
    """Write `checkpoints/step-N/` atomically, point `latest` at it, prune to the newest `keep_last`."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:07d}"
    opt_tensors, groups = _optimizer_tensors(optimizer)
    rng_tensors, rng_plain = _rng_state()
    with atomic_dir(final) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        write_json(tmp / "state.json", {"format": FORMAT_VERSION, "step": step, "rng": rng_plain, **state})
        write_json(tmp / "optimizer_groups.json", groups)
        files = sorted(p.name for p in tmp.iterdir())
        write_json(tmp / "manifest.json", {"step": step, "sha256": {n: _sha256(tmp / n) for n in files}})
    write_text(root / "latest", final.name + "\n")
    if keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


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
    """Restore model, optimizer and RNG states from `path`; return its state.json."""
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: model weights do not fit this model ({e}); check --preset/--model.*"
        ) from e
    if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:
        raise CheckpointError(
            f"{path}: checkpoint and model disagree (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "resume with the same model options the run was started with"
        )
    groups = json.loads((path / "optimizer_groups.json").read_text())
    # load_state_dict moves each state tensor to its parameter's device (and keeps `step` where it belongs)
    _load_optimizer(optimizer, load_file(str(path / "optimizer.safetensors")), groups)
    state = json.loads((path / "state.json").read_text())
    _restore_rng(load_file(str(path / "rng.safetensors")), state.pop("rng"))
    return state
