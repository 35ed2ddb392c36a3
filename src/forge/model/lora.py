"""LoRA: low-rank adapters applied to an unchanged `Transformer` from outside.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", eq. 3: a frozen weight W0 (out, in)
gets a trainable update of rank r, and a wrapped layer computes h = W0 x + (alpha / r) · B A x.

Design choices:
- `apply_lora` swaps the targeted `nn.Linear` modules for `LoraLinear` wrappers in place and freezes every
  other parameter (embeddings, norms, lm_head, the wrapped weights): only `lora_A` / `lora_B` train;
- A (r, in) is initialised as `nn.Linear` (and PEFT) initialise weights, Kaiming-uniform with a = √5 (the
  paper uses a Gaussian; the scale hardly matters since B starts at zero), B (out, r) is zero, so a freshly
  wrapped model computes exactly what the base model did; both draw on torch's global RNG;
- the update is scaled by alpha / r (section 4.1), so changing r does not require retuning the learning rate;
- `lr_ratio` is LoRA+ (Hayou et al. 2024, "LoRA+: Efficient Low Rank Adaptation of Large Models"): B
  learns faster than A, by a fixed ratio; the optimizer reads it through `LoraConfig.lr_scales`;
- dropout acts on the adapter's input only, during training (an `nn.Dropout`, inactive in eval mode);
- adapter parameters stay float32 whatever the base weights' dtype, and are cast to the input's dtype in
  forward; cast the model (e.g. to bf16) *before* `apply_lora`, since `model.to(dtype)` casts them too;
- merging adds (alpha / r) · B A into W0 in place, in float32 maths cast back (section 4.1: no inference
  latency); `unmerge` subtracts it again, exact up to float rounding. `merge_lora` folds every adapter and
  puts the plain `nn.Linear` back, so the model is an ordinary `Transformer` with the usual state dict;
- the tied embedding / lm_head matrix gets no low-rank adapter; 'all-linear' means the seven linear layers
  of each block and leaves out lm_head, as PEFT does: lm_head is the (often tied) vocabulary projection,
  whose adapter would be large (vocab_size · r) and would change the input embedding too;
- instead, a few rows of it can train (`token_ids`, as PEFT's `trainable_token_indices`): the chat
  template's markers, which a base model saw rarely or never, keep their near-random pretrained rows under
  plain LoRA, and predicting `<|end|>` from such a row is what a frozen vocabulary cannot learn well
  (measured on the standard-library SFT set: 3.6 nats on that token under LoRA vs 1.2 under full SFT).
  `TokenRows` holds a correction per row, applied by forward hooks on the embedding (input side) and on
  lm_head (output side, the same correction when tied); no module is replaced, so checkpoints keep their
  keys plus `token_rows.delta`;
- state-dict keys read as the module tree: `model.layers.0.self_attn.q_proj.lora_A`, with the frozen
  weight at `...q_proj.base.weight`, so a wrapped model still saves and resumes through training
  checkpoints. `forge.model.io.save_model` is for plain models only: call `merge_lora` first (a merged
  model.safetensors), or `save_adapter` for the adapter alone.
"""

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from forge import __version__
from forge.errors import CheckpointError, ConfigError, ForgeError
from forge.io import write_json, write_with
from forge.model.transformer import Transformer

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ALL_LINEAR = "all-linear"
LINEAR_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """Which linear layers get low-rank adapters, and their size."""

    rank: int = 16
    """rank r of the update B·A"""
    alpha: float = 32.0
    """scale numerator: the update is multiplied by alpha / rank"""
    dropout: float = 0.0
    """dropout on the adapter's input during training"""
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    """linear layers to adapt, by name suffix (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj),
    or 'all-linear' (every linear layer of the blocks; lm_head excluded, as PEFT does)"""
    special_tokens: bool = True
    """also train the embedding and output rows of the special tokens (the chat-template markers, which a
    base model saw rarely or never): 7 rows, a few thousand weights"""
    lr_ratio: float = 1.0
    """LoRA+: lora_B's learning rate is lr_ratio × the run's (lora_A's); 1 is plain LoRA, 16 the paper's"""

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"--adapter.rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise ConfigError(f"--adapter.alpha must be > 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"--adapter.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.lr_ratio > 0:
            raise ConfigError(f"--adapter.lr-ratio must be > 0, got {self.lr_ratio!r}")
        valid = (*LINEAR_TARGETS, ALL_LINEAR)
        if isinstance(self.targets, str) or not self.targets:
            raise ConfigError(
                f"--adapter.targets must be a non-empty list like q_proj,v_proj, got {self.targets!r}"
            )
        unknown = [name for name in self.targets if name not in valid]
        if unknown:
            raise ConfigError(
                f"--adapter.targets: unknown {', '.join(unknown)}; choose from {', '.join(valid)}"
            )

    @property
    def scale(self) -> float:
        """alpha / rank, the factor on B·A."""
        return self.alpha / self.rank

    @property
    def lr_scales(self) -> dict[str, float]:
        """Learning-rate multiples by parameter-name suffix, for `forge.train.optim.build_optimizer`."""
        return {} if self.lr_ratio == 1.0 else {"lora_B": self.lr_ratio}


class LoraLinear(nn.Module):
    """A frozen `nn.Linear` (`.base`) plus a trainable low-rank update: base(x) + scale · B A dropout(x)."""

    def __init__(self, base: nn.Linear, *, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.rank, self.scale = rank, alpha / rank
        device = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=device, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.train(base.training)

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        if self.merged:  # the update already lives in base.weight
            return out
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype))
        return out + update * self.scale  # (..., in) → (..., r) → (..., out)

    def delta_weight(self) -> Tensor:
        """scale · B A (out, in) in float32: what merging adds to the base weight."""
        return (self.lora_B.float() @ self.lora_A.float()) * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        """Add scale · B A into base.weight in place (float32 maths, cast back); no-op if merged."""
        if not self.merged:
            weight = self.base.weight
            weight.copy_(weight.float() + self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract scale · B A from base.weight again (exact up to float rounding); no-op if not merged."""
        if self.merged:
            weight = self.base.weight
            weight.copy_(weight.float() - self.delta_weight())
            self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scale={self.scale:g}, merged={self.merged}"


class TokenRows(nn.Module):
    """Trainable corrections to the embedding (and lm_head) rows of a few tokens of a frozen model.

    Installed on a `Transformer` as `model.token_rows` by `apply_lora`; forward hooks add `delta` to the
    embeddings of those tokens and `h · delta_out` to their logits (`delta_out` is `delta` itself when the
    embeddings are tied). Both start at zero, so the model computes exactly what the base did.
    """

    token_ids: Tensor
    slots: Tensor

    def __init__(self, model: Transformer, token_ids: Sequence[int]) -> None:
        super().__init__()
        vocab, dim = model.config.vocab_size, model.config.dim
        ids = sorted(set(token_ids))
        if not ids or ids[0] < 0 or ids[-1] >= vocab:
            raise ConfigError(f"trainable token ids must lie in [0, {vocab}), got {list(token_ids)[:8]}")
        device = model.lm_head.weight.device
        self.register_buffer("token_ids", torch.tensor(ids, device=device), persistent=False)
        slots = torch.full((vocab,), -1, dtype=torch.long, device=device)
        slots[self.token_ids] = torch.arange(len(ids), device=device)
        self.register_buffer("slots", slots, persistent=False)  # vocab id → row of delta, -1 = none
        self.delta = nn.Parameter(torch.zeros(len(ids), dim, device=device, dtype=torch.float32))
        self.tied = model.config.tie_embeddings
        self.delta_out = None if self.tied else nn.Parameter(torch.zeros_like(self.delta))
        self.hooks: list[RemovableHandle] = [
            model.model.embed_tokens.register_forward_hook(self._embed_hook),
            model.lm_head.register_forward_hook(self._head_hook),
        ]

    def _embed_hook(self, module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> Tensor:
        slot = self.slots[args[0]]  # (B, T): row of delta, or -1
        hit = (slot >= 0).unsqueeze(-1)
        return out + torch.where(hit, self.delta[slot.clamp(min=0)].to(out.dtype), 0.0)  # (B, T, C)

    def _head_hook(self, module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> Tensor:
        hidden = args[0]
        delta = self.delta if self.delta_out is None else self.delta_out
        extra = F.linear(hidden, delta.to(hidden.dtype))  # (B, T, k)
        return out.index_add(-1, self.token_ids, extra.to(out.dtype))  # (B, T, V)

    @torch.no_grad()
    def merge_into(self, model: Transformer) -> None:
        """Add the corrections into the embedding (and untied lm_head) rows and remove the hooks."""
        for hook in self.hooks:
            hook.remove()
        embedding = model.model.embed_tokens.weight
        embedding[self.token_ids] = (embedding[self.token_ids].float() + self.delta).to(embedding.dtype)
        if self.delta_out is not None:
            head = model.lm_head.weight
            head[self.token_ids] = (head[self.token_ids].float() + self.delta_out).to(head.dtype)

    def extra_repr(self) -> str:
        return f"tokens={self.token_ids.tolist()}, tied={self.tied}"


def _adapters(model: nn.Module) -> dict[str, LoraLinear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLinear)}


def _token_rows(model: nn.Module) -> TokenRows | None:
    rows = getattr(model, "token_rows", None)
    return rows if isinstance(rows, TokenRows) else None


def _target_names(model: Transformer, targets: tuple[str, ...]) -> list[str]:
    """Names of the plain linear layers inside the blocks that `targets` select (never lm_head)."""
    suffixes = LINEAR_TARGETS if ALL_LINEAR in targets else targets
    return [
        name
        for name, module in model.model.layers.named_modules(prefix="model.layers")
        if isinstance(module, nn.Linear) and name.rpartition(".")[2] in suffixes
    ]


def _refuse_adapted(model: nn.Module) -> None:
    if adapted := list(_adapters(model)) or (["token_rows"] if _token_rows(model) else []):
        raise ForgeError(
            f"the model already has LoRA adapters ({adapted[0]}, ...); "
            "call merge_lora(model) first, or start from a fresh base model"
        )


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def apply_lora(model: Transformer, config: LoraConfig, *, token_ids: Sequence[int] = ()) -> list[str]:
    """Wrap the targeted linear layers in `LoraLinear` in place and freeze every other parameter.

    With `config.special_tokens`, the embedding rows of `token_ids` (the tokenizer's special tokens: the
    caller knows them) train too, as `model.token_rows`. Returns the wrapped modules' names in model order.
    Adapters are initialised from torch's global RNG. Raises `ForgeError` if the model already has adapters.
    """
    _refuse_adapted(model)
    model.requires_grad_(False)
    names = _target_names(model, config.targets)
    for name in names:
        base = model.get_submodule(name)
        assert isinstance(base, nn.Linear)
        _replace(model, name, LoraLinear(base, rank=config.rank, alpha=config.alpha, dropout=config.dropout))
    if config.special_tokens and token_ids:
        model.token_rows = TokenRows(model, token_ids)
    return names


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The adapter parameters by state-dict name (`model.layers.0.self_attn.q_proj.lora_A`, ...,
    `token_rows.delta`)."""
    params = {
        f"{name}.{kind}": getattr(module, kind)
        for name, module in _adapters(model).items()
        for kind in ("lora_A", "lora_B")
    }
    if rows := _token_rows(model):
        params.update({f"token_rows.{name}": p for name, p in rows.named_parameters()})
    return params


def trainable_fraction(model: nn.Module) -> float:
    """Trainable parameters / all parameters (adapters included, a tied matrix counted once)."""
    params = list(model.parameters())  # shared (tied) parameters are listed once
    return sum(p.numel() for p in params if p.requires_grad) / sum(p.numel() for p in params)


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight and put the plain `nn.Linear` back, in place.

    The model is then an ordinary `Transformer` (usual state-dict keys, `save_model` works). Its parameters
    stay frozen: call `model.requires_grad_(True)` to train all of them.
    """
    for name, module in _adapters(model).items():
        module.merge()
        _replace(model, name, module.base)
    if rows := _token_rows(model):
        assert isinstance(model, Transformer)
        rows.merge_into(model)
        del model.token_rows


def save_adapter(
    model: nn.Module, directory: str | Path, config: LoraConfig, *, base_model: str | None = None
) -> None:
    """Write the adapter alone: `adapter_model.safetensors` (float32) and `adapter_config.json`.

    `config` is the one given to `apply_lora`; `base_model` (e.g. the base run directory) is recorded as a
    note for whoever loads the adapter.
    """
    adapters = _adapters(model)
    if not adapters:
        raise ValueError("the model has no LoRA adapters to save; call apply_lora first")
    if any(m.rank != config.rank or m.scale != config.scale for m in adapters.values()):
        raise ValueError("config does not match the adapters on the model (rank or alpha differ)")
    directory = Path(directory)
    weights = {
        name: p.detach().to("cpu", torch.float32).contiguous() for name, p in lora_parameters(model).items()
    }
    write_with(
        directory / ADAPTER_WEIGHTS_NAME, lambda tmp: save_file(weights, str(tmp), metadata={"format": "pt"})
    )
    meta = {
        "rank": config.rank,
        "alpha": config.alpha,
        "dropout": config.dropout,
        "targets": list(config.targets),
        "modules": list(adapters),
        "special_tokens": config.special_tokens,
        "lr_ratio": config.lr_ratio,
        "token_ids": rows.token_ids.tolist() if (rows := _token_rows(model)) else [],
        "base_model": base_model,
        "forge_version": __version__,
    }
    write_json(directory / ADAPTER_CONFIG_NAME, meta)


def load_adapter_config(directory: str | Path) -> LoraConfig:
    """The `LoraConfig` saved in `directory/adapter_config.json`."""
    return _read_adapter_config(directory)[0]


def _read_adapter_config(directory: str | Path) -> tuple[LoraConfig, list[int]]:
    """The saved `LoraConfig` and the ids of the tokens whose rows were trained."""
    path = Path(directory) / ADAPTER_CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} not found; pass an adapter directory written by save_adapter")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        token_ids = [int(i) for i in meta.get("token_ids", [])]
        config = LoraConfig(
            rank=meta["rank"], alpha=meta["alpha"], dropout=meta["dropout"], targets=tuple(meta["targets"]),
            special_tokens=bool(meta.get("special_tokens", token_ids)), lr_ratio=meta.get("lr_ratio", 1.0),
        )  # fmt: skip
        return config, token_ids
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); the file is damaged") from e
    except (KeyError, TypeError) as e:
        raise CheckpointError(
            f"{path}: missing or malformed field {e}; was it written by save_adapter?"
        ) from e
    except ConfigError as e:
        raise CheckpointError(f"{path}: invalid adapter config: {e}") from e


def _check_adapter(
    path: Path, weights: dict[str, Tensor], model: Transformer, config: LoraConfig, token_ids: list[int]
) -> None:
    """Raise `CheckpointError` unless `weights` are exactly the adapters `apply_lora` would add to `model`."""
    expected: dict[str, tuple[int, ...]] = {}
    if token_ids:
        expected["token_rows.delta"] = (len(set(token_ids)), model.config.dim)
        if not model.config.tie_embeddings:
            expected["token_rows.delta_out"] = expected["token_rows.delta"]
    for name in _target_names(model, config.targets):
        base = model.get_submodule(name)
        assert isinstance(base, nn.Linear)
        expected[f"{name}.lora_A"] = (config.rank, base.in_features)
        expected[f"{name}.lora_B"] = (base.out_features, config.rank)
    missing, unexpected = sorted(expected.keys() - weights.keys()), sorted(weights.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: adapter tensors do not match this model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); was the adapter trained on this base model?"
        )
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(weights[name].shape)}, this model needs {shape}; "
                "the adapter was trained on a different base model"
            )


def load_adapter(model: Transformer, directory: str | Path) -> LoraConfig:
    """Apply the adapter saved in `directory` to `model` (a plain base model) and return its config.

    Names and shapes are checked before the model is touched; a mismatch raises `CheckpointError`
    naming the file and the first tensor that does not fit.
    """
    _refuse_adapted(model)
    config, token_ids = _read_adapter_config(directory)
    path = Path(directory) / ADAPTER_WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} not found; the adapter directory is incomplete")
    device = next(model.parameters()).device
    try:
        weights = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors file ({e}); the file is damaged") from e
    _check_adapter(path, weights, model, config, token_ids)
    apply_lora(model, config, token_ids=token_ids)
    with torch.no_grad():
        for name, param in lora_parameters(model).items():
            param.copy_(weights[name])
    return config
