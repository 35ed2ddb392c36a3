"""DPO: only response tokens are scored, the policy learns the preferences (every weight moves, the
log-prob margin grows, reward accuracy on the training pairs reaches 1), the reference never changes,
LoRA trains adapters only, and a resumed run ends where an uninterrupted one does."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from tiny_prefs import preference_pairs

import forge.align.dpo as dpo_module
from forge.align.dpo import DpoConfig, dpo
from forge.align.pairs import collate, encode_pairs, response_targets
from forge.errors import ConfigError
from forge.model.io import load_model
from forge.model.lora import LoraConfig
from forge.model.transformer import Transformer
from forge.tokenizer.bpe import Tokenizer
from forge.tokenizer.special import SPECIAL_TOKENS


def _pairs() -> list[dict]:
    return preference_pairs(count=16, words=4)


@pytest.fixture(scope="module")
def policy_run(base_run: Path) -> Path:
    return base_run


@pytest.fixture(scope="module")
def prefs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prefs") / "prefs.jsonl"
    path.write_text("".join(json.dumps(pair) + "\n" for pair in _pairs()))
    return path


def _config(policy: Path, data: Path, out: Path, **options: object) -> DpoConfig:
    values: dict = {"max_steps": 20, "lr": 1e-3, "batch_size": 4, "warmup_steps": 3, "val_data": str(data),
                    "eval_every": 0, "log_every": 10, "checkpoint_every": 0, "progress": False,
                    "threads": 1, **options}  # fmt: skip
    return DpoConfig(policy=str(policy), data=str(data), out=str(out), **values)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_only_the_answer_and_its_end_of_turn_are_scored(tokenizer: Tokenizer) -> None:
    pair = {"prompt": [{"role": "user", "content": "hi"}], "chosen": "apple ship", "rejected": "no"}
    encoded, _ = encode_pairs(tokenizer, [pair], seq_len=64)
    ids, lengths, prompt_lengths = collate(encoded, [0], tokenizer.pad_id)
    inputs, targets = response_targets(ids, lengths, prompt_lengths)
    assert inputs.shape == targets.shape == (2, ids.shape[1] - 1)
    for row, answer in enumerate(("apple ship", "no")):
        scored = [int(t) for t in targets[row] if t != -100]
        assert scored == tokenizer.encode(answer) + [tokenizer.end_of_turn_id]


def test_dpo_learns_the_preferences_and_leaves_the_reference_alone(
    policy_run: Path, prefs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    references: list[Transformer] = []

    def spy(config: DpoConfig, device: torch.device) -> Transformer:
        references.append(load_reference(config, device))
        return references[-1]

    load_reference = dpo_module.load_reference
    monkeypatch.setattr(dpo_module, "load_reference", spy)
    on_disk = _digest(policy_run / "model.safetensors")
    summary = dpo(_config(policy_run, prefs, tmp_path / "dpo"))

    # the policy learned: implicit-reward accuracy on the training pairs reaches 1, the margins grow
    assert summary["val_accuracy_before"] == 0.0 and summary["val_margin_before"] == 0.0  # policy = reference
    assert summary["val_accuracy_after"] == 1.0 and summary["val_margin_after"] > 0.3
    assert summary["val_logp_margin_after"] > summary["val_logp_margin_before"] + 3
    base, aligned = load_model(policy_run), load_model(tmp_path / "dpo")  # loads like any run
    for (name, before), (_, after) in zip(base.named_parameters(), aligned.named_parameters(), strict=True):
        assert not torch.equal(before, after), f"{name} did not train"
    # the reference: frozen, in eval mode, bitwise what it was loaded as
    (reference,) = references
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    for (name, loaded), (_, now) in zip(
        base.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert torch.equal(loaded, now.cpu()), f"reference {name} changed"
    assert _digest(policy_run / "model.safetensors") == on_disk
    assert (tmp_path / "dpo" / "loss.png").is_file() and "reward accuracy" in (
        tmp_path / "dpo" / "report.md"
    ).read_text()


def test_lora_dpo_trains_adapters_and_saves_a_merged_model(
    policy_run: Path, prefs: Path, tmp_path: Path
) -> None:
    adapter = LoraConfig(rank=4, alpha=8, targets=("all-linear",))
    summary = dpo(_config(policy_run, prefs, tmp_path / "lora", lora=True, adapter=adapter, max_steps=8))
    assert summary["trainable_fraction"] < 0.5 and summary["val_margin_after"] > 0
    assert (tmp_path / "lora" / "adapter" / "adapter_config.json").is_file()
    merged, base = load_model(tmp_path / "lora"), load_model(policy_run)
    assert not torch.equal(merged.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)
    moved = (merged.model.embed_tokens.weight != base.model.embed_tokens.weight).any(dim=1)
    assert set(moved.nonzero().flatten().tolist()) <= set(range(len(SPECIAL_TOKENS)))  # special rows only


def test_a_resumed_dpo_run_ends_with_the_same_weights(policy_run: Path, prefs: Path, tmp_path: Path) -> None:
    dpo(_config(policy_run, prefs, tmp_path / "straight", max_steps=6, loss_type="ipo"))
    dpo(_config(policy_run, prefs, tmp_path / "split", max_steps=3, checkpoint_every=3, loss_type="ipo"))
    dpo(_config(policy_run, prefs, tmp_path / "split", max_steps=6, checkpoint_every=3, loss_type="ipo",
                resume=True))  # fmt: skip
    straight, split = load_model(tmp_path / "straight"), load_model(tmp_path / "split")
    for (name, a), (_, b) in zip(straight.state_dict().items(), split.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_bad_options_name_the_flag(policy_run: Path, prefs: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--label-smoothing"):
        _config(policy_run, prefs, tmp_path / "x", loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ConfigError, match="--loss-type"):
        _config(policy_run, prefs, tmp_path / "x", loss_type="hinge")
