"""Checkpoints: resume gives bitwise the same training as an uninterrupted run; bad ones are skipped."""

import json
from pathlib import Path

import pytest
import torch

from forge.model.config import ModelConfig
from forge.model.transformer import Transformer
from forge.train.checkpoint import find_resumable, list_checkpoints, load_checkpoint
from forge.train.loop import TrainConfig, TrainState, train
from forge.train.optim import build_optimizer

CPU = torch.device("cpu")


class StepLoader:
    """Deterministic batches that depend only on the position, like the real loader."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.position = 0
        self.interrupt_at = interrupt_at

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position == self.interrupt_at:
            raise KeyboardInterrupt  # what Ctrl-C does in the middle of a run
        g = torch.Generator().manual_seed(self.position)
        self.position += 1
        tokens = torch.randint(0, 64, (4, 17), generator=g)
        return tokens[:, :-1], tokens[:, 1:]

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def _setup(
    seed: int = 0, interrupt_at: int | None = None
) -> tuple[Transformer, torch.optim.Optimizer, StepLoader]:
    torch.manual_seed(seed)
    model = Transformer(
        ModelConfig(vocab_size=64, context_length=16, dim=32, num_layers=2, num_heads=4, num_kv_heads=2)
    )
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), device=CPU)
    return model, opt, StepLoader(interrupt_at)


def _run(run_dir: Path, steps: int, state: TrainState, model, opt, loader, every: int) -> TrainState:
    config = TrainConfig(
        max_steps=steps,
        checkpoint_every=every,
        log_every=1,
        warmup_steps=2,
        progress=False,
        eval_every=0,
        keep_checkpoints=0,
    )
    return train(
        model,
        opt,
        config,
        run_dir=run_dir,
        next_batch=loader.next_batch,
        data_state=loader.state_dict,
        state=state,
        device=CPU,
    )


def _losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["train_loss"] for r in map(json.loads, lines) if "train_loss" in r}


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path: Path) -> None:
    model, opt, loader = _setup()
    _run(tmp_path / "full", 8, TrainState(), model, opt, loader, every=4)
    full_weights = {k: v.clone() for k, v in model.state_dict().items()}

    # the same run interrupted by Ctrl-C at step 6 (it saves a checkpoint), continued by a fresh setup
    model2, opt2, loader2 = _setup(seed=123)  # different init: everything must come from the checkpoint
    (tmp_path / "part").mkdir()
    stopped = _run(tmp_path / "part", 8, TrainState(), *_setup(interrupt_at=6), every=4)
    assert stopped.interrupted and stopped.step == 6
    saved = load_checkpoint(find_resumable(tmp_path / "part"), model=model2, optimizer=opt2)
    loader2.load_state_dict(saved["data"])
    _run(tmp_path / "part", 8, TrainState(**saved["train_state"]), model2, opt2, loader2, every=4)

    assert _losses(tmp_path / "part")[7] == _losses(tmp_path / "full")[7]  # the next step's loss, bitwise
    assert _losses(tmp_path / "part") == _losses(tmp_path / "full")
    for name, value in model2.state_dict().items():
        assert torch.equal(value, full_weights[name]), name


def test_corrupted_checkpoint_is_skipped_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _run(tmp_path, 4, TrainState(), *_setup(), every=2)
    first, second = list_checkpoints(tmp_path)
    with open(second / "model.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02\x03")
    assert find_resumable(tmp_path) == first
    assert "does not match its checksum" in capsys.readouterr().err


def test_half_written_checkpoint_is_ignored(tmp_path: Path) -> None:
    _run(tmp_path, 2, TrainState(), *_setup(), every=2)
    (tmp_path / "checkpoints" / "step-0000009").mkdir()  # no manifest: a crash mid-write
    assert find_resumable(tmp_path).name == "step-0000002"


def test_keep_best_keeps_the_lowest_validation_loss_checkpoint(tmp_path: Path) -> None:
    model, opt, loader = _setup()
    losses = iter([3.0, 1.0, 2.0, 2.5, 9.9])  # at steps 2, 4, 6, 8, then the final evaluation

    def scripted_eval(final: bool) -> dict[str, float]:
        return {"loss": next(losses), "bpb": 1.0}

    config = TrainConfig(max_steps=9, eval_every=2, checkpoint_every=3, keep_checkpoints=1, keep_best=True,
                         log_every=1, progress=False)  # fmt: skip
    data = {"next_batch": loader.next_batch, "data_state": loader.state_dict}
    state = train(
        model, opt, config, run_dir=tmp_path, state=TrainState(), device=CPU, evaluate=scripted_eval, **data
    )
    assert (state.best_step, state.best_val_loss) == (4, 1.0)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000004", "step-0000009"]  # best + newest
    assert (tmp_path / "checkpoints" / "best").read_text().strip() == "step-0000004"
    saved = json.loads((tmp_path / "checkpoints" / "step-0000009" / "state.json").read_text())
    assert saved["train_state"]["best_step"] == 4  # a resumed run goes on protecting it
