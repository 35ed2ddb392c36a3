"""The transformer: config and presets, HF-named parameters, the cache path, HF Llama parity, overfitting."""

import pytest
import torch
import torch.nn.functional as F

from forge.errors import ConfigError
from forge.model.config import PRESETS, ModelConfig, estimate_params, flops_per_token, model_preset
from forge.model.io import hf_config_dict
from forge.model.transformer import Transformer

transformers = pytest.importorskip("transformers")


def tiny_config(**overrides: object) -> ModelConfig:
    fields: dict = dict(vocab_size=96, context_length=24, dim=32, num_layers=2, num_heads=4, num_kv_heads=2)
    return ModelConfig(**{**fields, **overrides})


# --- config ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (dict(dim=30, num_heads=4), "num_heads"),
        (dict(num_heads=4, num_kv_heads=3), "num_kv_heads"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(num_layers=-1), "num_layers"),
        (dict(dim=36, num_heads=4), "num_heads"),  # head_dim 9 is odd
        (dict(intermediate_size=-5), "intermediate_size"),
        (dict(rope_theta=0.0), "rope_theta"),
        (dict(norm_eps=0.0), "norm_eps"),
    ],
)
def test_bad_config_names_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"model.{field}"):
        ModelConfig(**overrides)


def test_presets_have_the_advertised_sizes() -> None:
    ranges = {"tiny": (0.5e6, 2e6), "small": (7e6, 14e6), "base": (40e6, 65e6), "gpt2-124m": (120e6, 128e6)}
    assert set(PRESETS) == set(ranges)
    for name, (low, high) in ranges.items():
        config = model_preset(name) if name == "gpt2-124m" else model_preset(name, vocab_size=8192)
        assert low <= estimate_params(config) <= high, name
    gpt2 = model_preset("gpt2-124m")
    assert (gpt2.num_layers, gpt2.dim, gpt2.num_heads, gpt2.context_length, gpt2.vocab_size) == (
        12, 768, 12, 1024, 50304
    )  # fmt: skip
    with pytest.raises(ConfigError, match="tiny, small"):
        model_preset("huge")


def test_auto_ffn_dim() -> None:
    assert ModelConfig(dim=768).ffn_dim == 2048  # 8/3 * 768, already a multiple of 64
    assert ModelConfig(dim=64).ffn_dim == 192  # 170.7 rounded up to 64s
    assert ModelConfig(dim=64, intermediate_size=100).ffn_dim == 100


def test_flops_per_token_golden() -> None:
    config = ModelConfig(
        vocab_size=100, dim=16, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=32
    )
    # per layer: q, o 16x16 each; k, v 16x8 each; mlp 3 * 16 * 32; norms 2 * 16 → 512 + 256 + 1536 + 32
    per_layer = 512 + 256 + 1536 + 32
    assert estimate_params(config) == 2 * per_layer + 16 + 100 * 16
    matmul_params = 2 * per_layer + 16 + 100 * 16  # tied: the embedding is the lm_head matmul
    assert flops_per_token(config, 10) == 6 * matmul_params + 12 * 2 * 2 * 8 * 10


# --- the model ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [True, False])
def test_parameter_names_and_counts(tie: bool) -> None:
    config = tiny_config(tie_embeddings=tie)
    model = Transformer(config)
    names = set(model.state_dict())
    layer = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
             "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm"]  # fmt: skip
    expected = {f"model.layers.{i}.{part}.weight" for i in range(2) for part in layer}
    expected |= {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    assert names == expected  # no rope buffers, no biases
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie
    assert model.num_parameters() == estimate_params(config)
    embeddings = 96 * 32 * (1 if tie else 2)
    assert model.num_parameters(exclude_embeddings=True) == estimate_params(config) - embeddings


def test_init_scales_residual_projections() -> None:
    model = Transformer(tiny_config(num_layers=8, dim=64, vocab_size=512))
    std = model.config.init_std
    assert model.model.embed_tokens.weight.std().item() == pytest.approx(std, rel=0.05)
    assert model.model.layers[0].mlp.up_proj.weight.std().item() == pytest.approx(std, rel=0.05)
    assert model.model.layers[0].self_attn.o_proj.weight.std().item() == pytest.approx(std / 4, rel=0.1)
    assert model.model.layers[0].mlp.down_proj.weight.std().item() == pytest.approx(std / 4, rel=0.1)
    assert torch.all(model.model.norm.weight == 1)


def test_logits_are_float32_and_causal() -> None:
    model = Transformer(tiny_config())
    ids = torch.randint(0, 96, (2, 12))
    logits = model(ids)
    assert logits.shape == (2, 12, 96) and logits.dtype == torch.float32
    changed = ids.clone()
    changed[:, 8:] = (ids[:, 8:] + 1) % 96
    torch.testing.assert_close(model(changed)[:, :8], logits[:, :8])
    assert model.to(torch.bfloat16)(ids).dtype == torch.float32
    with pytest.raises(ValueError, match="context length"):
        model(torch.zeros(1, 25, dtype=torch.long))


class DictCache:
    """The smallest KVCacheLike: per layer, a dict position → (k, v) per batch row; returns slots 0..S-1."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.store: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        B, H, T, D = k.shape
        for b in range(B):
            for t in range(T):
                self.store[layer, b, int(positions[b, t])] = (k[b, :, t], v[b, :, t])
        garbage = (100 * torch.randn(H, D), 100 * torch.randn(H, D))  # unwritten slots: must be masked
        rows = [[self.store.get((layer, b, s), garbage) for s in range(self.length)] for b in range(B)]
        k_all = torch.stack([torch.stack([kv[0] for kv in row], dim=1) for row in rows])  # (B, H, S, D)
        v_all = torch.stack([torch.stack([kv[1] for kv in row], dim=1) for row in rows])
        return k_all, v_all


@pytest.mark.parametrize("num_kv_heads", [4, 2])
def test_cache_decoding_matches_full_forward(num_kv_heads: int) -> None:
    model = Transformer(tiny_config(num_kv_heads=num_kv_heads)).eval()
    ids = torch.randint(0, 96, (2, 10))
    full = model(ids)
    cache = DictCache(length=16)
    pieces = [model(ids[:, :4], cache=cache)]  # prefill 4 tokens, default positions
    for t in range(4, 10):
        pieces.append(model(ids[:, t : t + 1], positions=torch.full((2, 1), t), cache=cache))
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_cache_with_ragged_positions() -> None:
    # row 1 is row 0 shifted by two positions: each row must see only its own slots up to its position
    model = Transformer(tiny_config()).eval()
    ids = torch.randint(0, 96, (1, 6))
    full = model(ids)
    cache = DictCache(length=8)
    model(ids[:, :4].expand(2, 4), positions=torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]]), cache=cache)
    step = model(torch.stack([ids[:, 4], ids[:, 3]]), positions=torch.tensor([[4], [3]]), cache=cache)
    torch.testing.assert_close(step[0, 0], full[0, 4], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step[1, 0], full[0, 3], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tie", [True, False])
def test_parity_with_transformers_llama(tie: bool) -> None:
    config = tiny_config(tie_embeddings=tie, rope_theta=500.0, norm_eps=1e-6)
    model = Transformer(config).eval()
    hf_config = transformers.LlamaConfig(**hf_config_dict(config))
    hf_model = transformers.LlamaForCausalLM(hf_config).eval()
    missing, unexpected = hf_model.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and not missing
    ids = torch.randint(0, 96, (2, 20))
    with torch.no_grad():
        expected = hf_model(ids).logits
    torch.testing.assert_close(model(ids), expected, atol=1e-5, rtol=1e-5)


def test_overfits_one_batch() -> None:
    model = Transformer(tiny_config(vocab_size=64, context_length=16))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    ids = torch.randint(0, 64, (4, 17))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    losses = []
    for _ in range(100):
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 3.5  # about ln(64) at init
    assert losses[-1] < 0.1


def test_activation_checkpointing_gives_the_same_loss_and_gradients() -> None:
    config = ModelConfig(vocab_size=64, context_length=16, dim=32, num_layers=3, num_heads=4, num_kv_heads=2)
    model = Transformer(config).train()
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    grads = []
    for recompute in (False, True):
        model.activation_checkpointing = recompute
        model.zero_grad()
        loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss_plain, grads_plain), (loss_recomputed, grads_recomputed) = grads
    assert torch.equal(loss_plain, loss_recomputed)
    for a, b in zip(grads_plain, grads_recomputed, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
