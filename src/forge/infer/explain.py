"""The "explain" view of generation: what the model considered at each step, and where the prompt attends.

Design choices:
- `Explainer` is an `on_token` callback of the engine: it sees the logits each step was sampled from (after
  the engine's own masks: token healing, `min_new_tokens`) and turns them into probabilities as the
  sampler would, softmax(logits / temperature), raw softmax for greedy decoding (temperature 0); the
  logit bias and penalties are not applied, so the view is the model's own opinion;
- each step records the token chosen, its probability and rank (it may lie outside the top N, under
  sampling), the top N candidates and the entropy in bits; `format_explain` prints them as a table with
  probability bars on an absolute scale (a full bar is probability 1), `explain_json` as plain data;
- `attention_weights` is applied to an unchanged model from outside: the attention kernel
  (`F.scaled_dot_product_attention`) never materialises the probabilities, so a forward hook captures the
  layer's normalised input and the probabilities are recomputed from q_proj / k_proj with the same
  rotary positions, grouped-query heads, 1/√head_dim scale and causal mask, in float32.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor

from forge.errors import ConfigError, ForgeError
from forge.io import write_with
from forge.model.config import ModelConfig
from forge.model.layers import Block, apply_rope

if TYPE_CHECKING:
    from forge.model.transformer import Transformer
    from forge.tokenizer.bpe import Tokenizer

BAR_WIDTH = 24  # characters of a probability-1 bar
MAX_PLOT_TOKENS = 48  # a longer prompt shows only its last tokens in the attention plot
_EIGHTHS = " ▏▎▍▌▋▊▉"
_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}

# ---------------------------------------------------------------------------------------------------------
# tokens as text


def token_texts(tokenizer: "Tokenizer") -> list[str]:
    """The text of every token id: special tokens by name, bytes that are not UTF-8 as `\\xNN`."""
    names = {i: name for name, i in tokenizer.special_ids.items()}
    return [
        names.get(i, piece.decode("utf-8", errors="backslashreplace"))
        for i, piece in enumerate(tokenizer.token_bytes())
    ]


def readable(text: str, *, limit: int = 24) -> str:
    """`text` on one line: newlines, tabs and other control characters escaped, cut to `limit` with '…'."""
    shown = "".join(_ESCAPES.get(c, c if c.isprintable() else f"\\x{ord(c):02x}") for c in text)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------------------
# the next-token distributions


@dataclass(frozen=True)
class Candidate:
    """One token the model could have produced at a step."""

    token_id: int
    text: str
    probability: float


@dataclass(frozen=True)
class Step:
    """One generated token: the one chosen, its rank (1 = most likely), the top candidates, the entropy."""

    chosen: Candidate
    rank: int
    top: tuple[Candidate, ...]
    entropy_bits: float


class Explainer:
    """An `on_token` callback for `generate_text` / `Generation` that records a `Step` per new token.

    When generation stops on end-of-text, the last step is that choice (it is not part of the text).
    """

    def __init__(self, texts: list[str], *, temperature: float, top_n: int = 5) -> None:
        """`texts`: each id's text (see `token_texts`); `temperature` as sampled with (0: greedy)."""
        if top_n < 1:
            raise ConfigError(f"--explain-top must be at least 1, got {top_n}")
        self.texts, self.temperature, self.top_n = texts, temperature, top_n
        self.steps: list[Step] = []

    def __call__(self, logits: Tensor, token_id: int) -> None:
        self.steps.append(explain_step(logits, token_id, self.texts, self.temperature, self.top_n))


def explain_step(logits: Tensor, token_id: int, texts: list[str], temperature: float, top_n: int) -> Step:
    """The `Step` of choosing `token_id` from raw next-token `logits` (V,)."""
    with torch.no_grad():
        scaled = logits.float() / temperature if temperature > 0 else logits.float()
        probs = scaled.softmax(-1).cpu()  # (V,)
        top = probs.topk(min(top_n, probs.numel()))
        rank = 1 + int((probs > probs[token_id]).sum())
        entropy = float(torch.special.entr(probs).sum()) / math.log(2)

    def candidate(i: int) -> Candidate:
        text = texts[i] if i < len(texts) else f"<unused id {i}>"  # the model's vocabulary may be padded
        return Candidate(token_id=i, text=text, probability=float(probs[i]))

    return Step(
        chosen=candidate(token_id),
        rank=rank,
        top=tuple(candidate(int(i)) for i in top.indices if probs[i] > 0),  # not the masked-out ones
        entropy_bits=entropy,
    )


def _bar(probability: float) -> str:
    eighths = round(probability * BAR_WIDTH * 8)
    full, rest = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[rest] if rest else "")


def format_explain(steps: list[Step]) -> str:
    """A terminal table: one block per step, candidates with probability bars, the chosen one marked →."""
    lines = []
    for number, step in enumerate(steps, 1):
        candidates = list(step.top)
        if step.chosen.token_id not in {c.token_id for c in candidates}:
            candidates.append(step.chosen)  # sampled from outside the top N: show it last, with its rank
        labels = [f"'{readable(c.text)}'" for c in candidates]
        width = max(len(label) for label in labels)
        lines.append(
            f"step {number}: '{readable(step.chosen.text)}'  "
            f"p={step.chosen.probability:.3f}  rank {step.rank}  entropy {step.entropy_bits:.2f} bits"
        )
        for rank, (c, label) in enumerate(zip(candidates, labels, strict=True), 1):
            marker = "→" if c.token_id == step.chosen.token_id else " "
            shown_rank = rank if rank <= len(step.top) else step.rank
            lines.append(
                f"  {marker} {shown_rank:>3}. {label:<{width}} {c.probability:7.2%} {_bar(c.probability)}"
            )
    return "\n".join(lines)


def explain_json(steps: list[Step]) -> list[dict[str, Any]]:
    """The steps as JSON-ready data (for `--explain-json`)."""
    return [
        {
            "step": number,
            "token_id": step.chosen.token_id,
            "text": step.chosen.text,
            "probability": step.chosen.probability,
            "rank": step.rank,
            "entropy_bits": step.entropy_bits,
            "top": [
                {
                    "token_id": c.token_id,
                    "text": c.text,
                    "probability": c.probability,
                    "chosen": c.token_id == step.chosen.token_id,
                }
                for c in step.top
            ],
        }
        for number, step in enumerate(steps, 1)
    ]


# ---------------------------------------------------------------------------------------------------------
# attention


def check_attention_target(config: ModelConfig, layer: int, head: int | None) -> None:
    """Raise a ConfigError naming the flag when `layer` or `head` is outside the model."""
    if not 0 <= layer < config.num_layers:
        raise ConfigError(
            f"--attention-layer must be between 0 and {config.num_layers - 1} (the model has "
            f"{config.num_layers} layers), got {layer}"
        )
    if head is not None and not 0 <= head < config.num_heads:
        raise ConfigError(
            f"--attention-head must be between 0 and {config.num_heads - 1} (the model has "
            f"{config.num_heads} heads per layer), got {head}; leave it out to average over heads"
        )


@torch.inference_mode()
def attention_weights(model: "Transformer", input_ids: list[int], layer: int, head: int | None) -> Tensor:
    """Causal attention probabilities (T, T) of `input_ids` in `layer`: one `head`, or the mean over heads.

    Row i is query position i, column j key position j; each row sums to 1 and is 0 after i.
    """
    config = model.config
    check_attention_target(config, layer, head)
    if not 0 < len(input_ids) <= config.context_length:
        raise ForgeError(
            f"the attention plot needs 1 to {config.context_length} tokens (the model's context), "
            f"got {len(input_ids)}; shorten the prompt"
        )
    block = cast(Block, model.model.layers[layer])
    captured: list[Tensor] = []
    hook = block.input_layernorm.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        device = next(model.parameters()).device
        model(torch.tensor([input_ids], device=device))
    finally:
        hook.remove()
    x = captured[0]  # (1, T, C): what self_attn reads
    attn = block.self_attn
    T, H, H_kv, D = len(input_ids), attn.num_heads, attn.num_kv_heads, attn.head_dim
    q = attn.q_proj(x).view(1, T, H, D).transpose(1, 2)  # (1, H, T, D)
    k = attn.k_proj(x).view(1, T, H_kv, D).transpose(1, 2)  # (1, H_kv, T, D)
    cos, sin = model.rope_cos[None, :T].to(x.dtype), model.rope_sin[None, :T].to(x.dtype)  # (1, T, D)
    q, k = apply_rope(q, cos, sin).float(), apply_rope(k, cos, sin).float()
    k = k.repeat_interleave(H // H_kv, dim=1)  # (1, H, T, D): query head h reads kv head h // groups
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(D)  # (1, H, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=scores.device).tril()
    weights = scores.masked_fill(~causal, float("-inf")).softmax(-1)[0]  # (H, T, T)
    return weights[head] if head is not None else weights.mean(0)


def plot_attention(weights: Tensor, token_labels: list[str], path: str | Path, title: str) -> None:
    """Draw attention `weights` (T, T) as a heatmap PNG: queries as rows, keys as columns.

    Prompts longer than `MAX_PLOT_TOKENS` show only their last tokens (the title says so).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    T = weights.shape[0]
    if len(token_labels) != T:
        raise ValueError(f"{len(token_labels)} labels for {T} tokens")
    n = min(T, MAX_PLOT_TOKENS)
    if n < T:
        title = f"{title}\n(last {n} of {T} tokens; rows do not sum to 1: earlier keys are cut off)"
    shown = weights[-n:, -n:].float().cpu().numpy()
    shown = np.ma.masked_where(np.triu(np.ones((n, n), dtype=bool), k=1), shown)  # future: left blank
    labels = [readable(label, limit=14).replace(" ", "·") for label in token_labels[-n:]]
    side = min(max(3.0 + 0.24 * n, 5.0), 15.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(shown, cmap="viridis", vmin=0.0, interpolation="nearest")
    fontsize = 9 if n <= 24 else 7
    ax.set_xticks(range(n), labels, rotation=90, fontsize=fontsize, fontfamily="monospace")
    ax.set_yticks(range(n), labels, fontsize=fontsize, fontfamily="monospace")
    ax.set(xlabel="key (attended to)", ylabel="query (attending)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="attention probability")
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
