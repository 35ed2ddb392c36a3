"""LoRA: a fresh adapter changes nothing, training moves only adapters, merge and save/load round-trip."""

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from forge.errors import CheckpointError, ConfigError, ForgeError
from forge.model.config import ModelConfig, estimate_params, model_preset
from forge.model.io import load_model, save_model
from forge.model.lora import (
    LoraConfig,
    LoraLinear,
    apply_lora,
    load_adapter,
    lora_parameters,
    merge_lora,
    save_adapter,
    trainable_fraction,
)
from forge.model.transformer import Transformer

VOCAB = 64


def make_model(**overrides: object) -> Transformer:
    fields: dict = dict(
        vocab_size=VOCAB, context_length=16, dim=32, num_layers=2, num_heads=4, num_kv_heads=2
    )
    return Transformer(ModelConfig(**{**fields, **overrides})).eval()


def train_steps(model: Transformer, steps: int = 4) -> None:
    """A few AdamW steps of next-token loss on random tokens, over the trainable parameters only."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        ids = torch.randint(0, VOCAB, (4, 16))
        logits = model(ids[:, :-1])  # (B, T-1, V)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def test_fresh_adapter_gives_base_logits() -> None:
    model = make_model()
    ids = torch.randint(0, VOCAB, (2, 16))
    before = model(ids)
    names = apply_lora(model, LoraConfig())
    assert names == [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    assert torch.equal(model(ids), before)  # B starts at zero
    assert "model.layers.0.self_attn.q_proj.lora_A" in model.state_dict()


def test_training_moves_adapters_only() -> None:
    model = make_model()
    apply_lora(model, LoraConfig(targets=("all-linear",), dropout=0.1))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    adapters = lora_parameters(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == adapters.keys()
    train_steps(model)
    for name, param in model.named_parameters():
        if name in adapters:
            assert not torch.equal(param, before[name]), f"adapter {name} did not change"
        else:
            assert torch.equal(param, before[name]), f"frozen {name} changed"
    assert all(p.dtype == torch.float32 for p in adapters.values())


def test_merge_matches_unmerged_and_saves_as_plain_model(tmp_path: Path) -> None:
    model = make_model()
    apply_lora(model, LoraConfig(targets=("all-linear",)))
    train_steps(model)
    ids = torch.randint(0, VOCAB, (2, 16))
    unmerged = model(ids)
    merge_lora(model)
    assert not any(isinstance(m, LoraLinear) for m in model.modules())
    torch.testing.assert_close(model(ids), unmerged, rtol=0, atol=1e-5)
    assert model.state_dict().keys() == Transformer(model.config).state_dict().keys()
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tie untouched
    save_model(model, tmp_path)
    assert torch.equal(load_model(tmp_path)(ids), model(ids))


def test_merge_then_unmerge_restores_the_weight() -> None:
    layer = LoraLinear(nn.Linear(32, 48, bias=False), rank=4, alpha=8.0)
    nn.init.normal_(layer.lora_B)
    original = layer.base.weight.detach().clone()
    x = torch.randn(3, 32)
    unmerged = layer(x)
    layer.merge()
    layer.merge()  # no-op: merging twice would add the update twice
    assert layer.merged and not torch.equal(layer.base.weight, original)
    torch.testing.assert_close(layer(x), unmerged, rtol=0, atol=1e-5)
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.base.weight, original, rtol=0, atol=1e-6)


def test_dropout_only_in_training() -> None:
    layer = LoraLinear(nn.Linear(32, 32, bias=False), rank=4, alpha=8.0, dropout=0.5)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(8, 32)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer.eval()(x))


def test_adapter_round_trip_onto_fresh_base(tmp_path: Path) -> None:
    base = make_model()
    model = copy.deepcopy(base)
    config = LoraConfig(rank=4, alpha=8.0, targets=("q_proj", "k_proj", "down_proj"))
    names = apply_lora(model, config)
    train_steps(model)
    save_adapter(model, tmp_path, config, base_model="runs/base")
    assert set(load_file(tmp_path / "adapter_model.safetensors")) == lora_parameters(model).keys()
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["modules"] == names and meta["base_model"] == "runs/base" and meta["rank"] == 4

    fresh = copy.deepcopy(base)
    assert load_adapter(fresh, tmp_path) == config
    ids = torch.randint(0, VOCAB, (2, 16))
    assert torch.equal(fresh(ids), model(ids))


def test_adapter_on_mismatched_base_raises(tmp_path: Path) -> None:
    model = make_model()
    apply_lora(model, LoraConfig())
    save_adapter(model, tmp_path, LoraConfig())
    wider = make_model(dim=48)
    with pytest.raises(CheckpointError, match=r"adapter_model.safetensors: model.layers.0.self_attn.q_proj"):
        load_adapter(wider, tmp_path)
    assert not any(isinstance(m, LoraLinear) for m in wider.modules())  # checked before touching the model
    with pytest.raises(CheckpointError, match=r"missing \['model.layers.2"):
        load_adapter(make_model(num_layers=3), tmp_path)
    with pytest.raises(CheckpointError, match="adapter_config.json not found"):
        load_adapter(make_model(), tmp_path / "nowhere")


def test_all_linear_wraps_seven_per_layer_not_lm_head() -> None:
    model = make_model()
    names = apply_lora(model, LoraConfig(targets=("all-linear",)))
    assert len(names) == 7 * 2 and not any("lm_head" in n for n in names)
    assert type(model.lm_head) is nn.Linear and not model.lm_head.weight.requires_grad
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_trainable_fraction_of_small_preset() -> None:
    config = model_preset("small", vocab_size=8192)
    with torch.device("meta"):  # shapes only: nothing to compute
        model = Transformer(config)
    names = apply_lora(model, LoraConfig(rank=16, targets=("all-linear",)))
    bases = [module.base for module in model.modules() if isinstance(module, LoraLinear)]
    assert len(bases) == len(names) == 7 * config.num_layers
    adapter = sum(16 * (base.in_features + base.out_features) for base in bases)
    fraction = trainable_fraction(model)
    assert fraction == pytest.approx(adapter / (estimate_params(config) + adapter))
    assert fraction < 0.1


def test_init_is_deterministic_and_double_apply_refused() -> None:
    first, second = make_model(), make_model()
    torch.manual_seed(1)
    apply_lora(first, LoraConfig())
    torch.manual_seed(1)
    apply_lora(second, LoraConfig())
    a, b = lora_parameters(first), lora_parameters(second)
    assert all(torch.equal(a[name], b[name]) for name in a)
    with pytest.raises(ForgeError, match="already has LoRA adapters"):
        apply_lora(first, LoraConfig())


def test_bf16_model_keeps_float32_adapters() -> None:
    model = make_model().to(torch.bfloat16)
    apply_lora(model, LoraConfig())
    train_steps(model, steps=2)
    adapters = lora_parameters(model)
    assert all(p.dtype == torch.float32 and p.grad is not None for p in adapters.values())
    ids = torch.randint(0, VOCAB, (2, 16))
    unmerged = model(ids)
    merge_lora(model)
    torch.testing.assert_close(model(ids), unmerged, rtol=0.05, atol=0.05)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_train_and_merge() -> None:
    with torch.device("cuda"):
        model = make_model().to(torch.bfloat16)
    apply_lora(model, LoraConfig(targets=("all-linear",)))
    assert all(p.is_cuda and p.dtype == torch.float32 for p in lora_parameters(model).values())
    optimizer = torch.optim.AdamW(lora_parameters(model).values(), lr=1e-2)
    ids = torch.randint(0, VOCAB, (4, 16), device="cuda")
    loss = F.cross_entropy(model(ids[:, :-1]).reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    loss.backward()
    optimizer.step()
    merge_lora(model)
    assert model(ids).isfinite().all()


@pytest.mark.parametrize(
    ("fields", "flag"),
    [
        (dict(rank=0), "--adapter.rank"),
        (dict(alpha=0.0), "--adapter.alpha"),
        (dict(dropout=1.0), "--adapter.dropout"),
        (dict(targets=()), "--adapter.targets"),
        (
            dict(targets=("q_proj", "qproj")),
            r"--adapter.targets: unknown qproj; choose from q_proj, .*all-linear",
        ),
    ],
)
def test_config_errors_name_the_flag(fields: dict, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        LoraConfig(**fields)


@pytest.mark.parametrize("tied", [True, False])
def test_token_rows_train_merge_and_round_trip(tmp_path: Path, tied: bool) -> None:
    base = make_model(tie_embeddings=tied)
    model = copy.deepcopy(base)
    ids = torch.randint(0, VOCAB, (2, 16))
    ids[:, ::3] = 5  # the rows being trained occur in the input
    before = model(ids)
    config = LoraConfig(rank=4, alpha=8.0)
    apply_lora(model, config, token_ids=[5, 6])
    assert torch.equal(model(ids), before)  # the corrections start at zero
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    train_steps(model)
    rows = lora_parameters(model)
    expected = {"token_rows.delta"} | (set() if tied else {"token_rows.delta_out"})
    assert expected <= rows.keys()
    assert all(not torch.equal(rows[name], torch.zeros_like(rows[name])) for name in expected)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)

    trained = model(ids)
    save_adapter(model, tmp_path, config)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["token_ids"] == [5, 6]
    fresh = copy.deepcopy(base)
    load_adapter(fresh, tmp_path)
    assert torch.equal(fresh(ids), trained)

    merge_lora(model)
    assert not hasattr(model, "token_rows")
    torch.testing.assert_close(model(ids), trained, rtol=0, atol=1e-5)
    changed = (model.model.embed_tokens.weight != base.model.embed_tokens.weight).any(dim=1)
    assert changed.nonzero().flatten().tolist() == [5, 6]  # only those rows moved
    save_model(model, tmp_path / "merged")
    assert torch.equal(load_model(tmp_path / "merged")(ids), model(ids))
