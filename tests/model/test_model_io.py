"""Model files: save → load is bit-exact, errors name the file, the HF export loads in transformers."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from forge.errors import CheckpointError
from forge.model.config import ModelConfig
from forge.model.io import export_hf, load_config, load_model, save_model
from forge.model.transformer import Transformer


def make_model(**overrides: object) -> Transformer:
    fields: dict = dict(vocab_size=80, context_length=16, dim=32, num_layers=2, num_heads=4, num_kv_heads=2)
    return Transformer(ModelConfig(**{**fields, **overrides})).eval()


@pytest.mark.parametrize("tie", [True, False])
def test_save_load_round_trip(tmp_path: Path, tie: bool) -> None:
    model = make_model(tie_embeddings=tie, rope_theta=1234.0)
    save_model(model, tmp_path, extra_config={"train": {"lr": 0.1}})
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["train"] == {"lr": 0.1} and saved["model"]["rope_theta"] == 1234.0
    assert ("lm_head.weight" in load_file(tmp_path / "model.safetensors")) != tie  # a tied matrix stored once

    loaded = load_model(tmp_path)
    assert loaded.config == model.config == load_config(tmp_path)
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for name in original:
        assert torch.equal(original[name], restored[name]), name
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tie
    ids = torch.randint(0, 80, (2, 16))
    assert torch.equal(model(ids), loaded(ids))


def test_load_with_dtype(tmp_path: Path) -> None:
    save_model(make_model(), tmp_path)
    model = load_model(tmp_path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_load_accepts_tied_weight_stored_under_lm_head(tmp_path: Path) -> None:
    # safetensors' own save_model may keep either name of a shared tensor
    model = make_model()
    save_model(model, tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["lm_head.weight"] = weights.pop("model.embed_tokens.weight")
    save_file(weights, tmp_path / "model.safetensors")
    loaded = load_model(tmp_path)
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_missing_files_raise_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="config.json not found"):
        load_model(tmp_path)
    save_model(make_model(), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors not found"):
        load_model(tmp_path)


def test_mismatched_config_raises_checkpoint_error(tmp_path: Path) -> None:
    save_model(make_model(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model"]["intermediate_size"] = 192  # auto is 128
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"mlp.gate_proj.weight has shape .*written together"):
        load_model(tmp_path)
    config["model"]["num_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"missing \['model.layers.2"):
        load_model(tmp_path)
    config["model"]["num_heads"] = 5
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model.num_heads"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json:1: not valid JSON"):
        load_model(tmp_path)


@pytest.mark.parametrize("tie", [True, False])
def test_export_loads_in_transformers_with_same_logits(tmp_path: Path, tie: bool) -> None:
    transformers = pytest.importorskip("transformers")
    model = make_model(tie_embeddings=tie, rope_theta=500.0)
    export_hf(model, tmp_path / "hf")
    hf_model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert hf_model.config.tie_word_embeddings == tie
    ids = torch.randint(0, 80, (2, 16))
    with torch.no_grad():
        expected = hf_model(ids).logits
    torch.testing.assert_close(model(ids), expected, atol=1e-5, rtol=1e-5)


def test_export_refuses_to_overwrite_a_forge_model(tmp_path: Path) -> None:
    save_model(make_model(), tmp_path)
    with pytest.raises(CheckpointError, match="Export to another directory"):
        export_hf(make_model(), tmp_path)
    assert "model" in json.loads((tmp_path / "config.json").read_text())
