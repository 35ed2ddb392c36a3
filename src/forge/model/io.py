"""Model files: our own directory format and an export that `transformers` loads as `LlamaForCausalLM`.

Design choices:
- weights only in safetensors (never pickle): `model.safetensors` beside a `config.json` holding
  `{"model": <ModelConfig fields>, ...extra}`; each file is written atomically (temp file + rename);
- a tied embedding is stored once (as `model.embed_tokens.weight`) and re-tied by construction on load;
- loading checks names and shapes before touching the model and raises `CheckpointError` with the path and
  a hint; weights load at the dtype asked for, float32 by default (highest precision unless told);
- our parameter names are HF Llama's, so the export is the same state dict plus an HF `config.json`.
"""

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from forge.errors import CheckpointError, ConfigError
from forge.io import write_json, write_with
from forge.model.config import ModelConfig
from forge.model.transformer import Transformer

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
_TIED_NAME = "lm_head.weight"


def _weights(model: Transformer, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors, the tied lm_head left out (it is the embedding)."""
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop(_TIED_NAME)
    return {name: tensor.detach().to("cpu", dtype).contiguous() for name, tensor in state.items()}


def save_model(
    model: Transformer, directory: str | Path, *, extra_config: dict[str, Any] | None = None
) -> None:
    """Write `model.safetensors` and `config.json` ({"model": config, **extra_config}) into `directory`."""
    directory = Path(directory)
    extra_config = extra_config or {}
    if any(
        name.endswith((".lora_A", ".lora_B")) or name.startswith("token_rows.") for name in model.state_dict()
    ):
        raise CheckpointError(
            "the model has LoRA adapters: merge them first (forge.model.lora.merge_lora) or save them alone "
            "(save_adapter)"
        )
    if "model" in extra_config:
        raise ValueError("extra_config must not have a 'model' key: it holds the model config")
    weights = _weights(model)
    write_with(directory / WEIGHTS_NAME, lambda tmp: save_file(weights, str(tmp), metadata={"format": "pt"}))
    write_json(directory / CONFIG_NAME, {"model": asdict(model.config), **extra_config})


def load_config(directory: str | Path) -> ModelConfig:
    """The `ModelConfig` saved in `directory/config.json`."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} not found; pass a model directory written by `forge pretrain`")
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))["model"]
        return ModelConfig(**fields)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); the file is damaged") from e
    except (KeyError, TypeError) as e:
        raise CheckpointError(
            f"{path}: no valid 'model' section ({e}); is this a forge model directory (not a HF export)?"
        ) from e
    except ConfigError as e:
        raise CheckpointError(f"{path}: invalid model config: {e}") from e


def _check_weights(path: Path, weights: dict[str, torch.Tensor], model: Transformer) -> None:
    expected = {name: tensor.shape for name, tensor in model.state_dict().items()}
    if model.config.tie_embeddings:
        expected.pop(_TIED_NAME)
    missing, unexpected = sorted(expected.keys() - weights.keys()), sorted(weights.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match config.json (missing {missing[:5]}, unexpected {unexpected[:5]}); "
            "were config.json and model.safetensors written together?"
        )
    for name, shape in expected.items():
        if weights[name].shape != shape:
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(weights[name].shape)}, config.json implies {tuple(shape)}; "
                "were config.json and model.safetensors written together?"
            )


def load_model(
    directory: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> Transformer:
    """A `Transformer` from a directory written by `save_model`, on `device`, float32 unless `dtype`."""
    config = load_config(directory)
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} not found; the model directory is incomplete (run interrupted?)")
    try:
        weights = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors file ({e}); the file is damaged") from e
    if config.tie_embeddings and _TIED_NAME in weights:  # written by safetensors' own save_model
        weights.setdefault("model.embed_tokens.weight", weights.pop(_TIED_NAME))
    with torch.device(device):
        model = Transformer(config)
    _check_weights(path, weights, model)
    model.load_state_dict(weights, strict=False)  # strict=False only for the tied lm_head, checked above
    return model.to(dtype) if dtype is not None else model


def hf_config_dict(config: ModelConfig) -> dict[str, Any]:
    """The `transformers.LlamaConfig` fields describing the same model."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.dim,
        "intermediate_size": config.ffn_dim,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.context_length,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,  # transformers < 5
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},  # transformers >= 5
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": config.init_std,
        "torch_dtype": "float32",
    }


def export_hf(model: Transformer, directory: str | Path) -> None:
    """Write a directory that `transformers.LlamaForCausalLM.from_pretrained` loads (float32 weights)."""
    directory = Path(directory)
    if (directory / CONFIG_NAME).is_file() and "model" in json.loads((directory / CONFIG_NAME).read_text()):
        raise CheckpointError(
            f"{directory} holds a forge model; exporting there would overwrite its config.json. "
            "Export to another directory"
        )
    weights = _weights(model, torch.float32)
    write_with(directory / WEIGHTS_NAME, lambda tmp: save_file(weights, str(tmp), metadata={"format": "pt"}))
    write_json(directory / CONFIG_NAME, hf_config_dict(model.config))
