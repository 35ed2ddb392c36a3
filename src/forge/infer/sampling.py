"""Sampling: the settings of one request, the logits processors, and `sample`.

Design choices:
- every processor is a pure function `(logits (B, V), setting) -> logits (B, V)` that removes tokens by
  setting their logits to -inf and returns a new tensor (never edits its input), so each one can be tested
  against a hand-computed example and compiled alone;
- `process_logits` applies them in one fixed order, the order of Hugging Face `generate`: settings that
  reshape the distribution come before the ones that cut it, so top-k / top-p see tempered probabilities:

  | order | processor           | setting            | off when          | status  |
  |-------|---------------------|--------------------|-------------------|---------|
  | 1     | repetition penalty  | (future)           | 1.0               | planned |
  | 2     | presence penalty    | (future)           | 0.0               | planned |
  | 3     | `apply_temperature` | `temperature`      | 1.0 (0 = greedy)  | done    |
  | 4     | `apply_top_k`       | `top_k`            | 0                 | done    |
  | 5     | `apply_top_p`       | `top_p`            | 1.0               | done    |
  | 6     | min-p               | (future)           | 0.0               | planned |

- temperature 0 is greedy decoding: `sample` takes the argmax of the raw logits and skips the processors
  (none of them can change the argmax, which they always keep);
- otherwise `sample` draws with `torch.multinomial` from a per-request `torch.Generator`, so a request
  with a seed is reproducible whatever else runs in the process.
"""

from dataclasses import dataclass

import torch

from forge.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    max_new_tokens: int = 128
    """generate at most this many tokens (fewer if the model emits end-of-text or the context fills up)"""
    temperature: float = 0.8
    """divide the logits by this before sampling: lower is more predictable, 0 is greedy decoding (0 to 2)"""
    top_k: int = 0
    """sample only among the k most likely tokens (0 = no limit)"""
    top_p: float = 1.0
    """nucleus sampling: sample from the smallest set of tokens whose probability reaches p (1 = off)"""
    seed: int | None = None
    """random seed of this generation, for reproducible samples (default: a fresh random seed)"""
    stop_on_eos: bool = True
    """stop when the model emits end-of-text (or end-of-turn); off: always generate max_new_tokens"""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            raise ConfigError(
                f"--temperature must be between 0 (greedy) and 2, got {self.temperature}; "
                "try 0.7 to 1.0 for varied but coherent text"
            )
        if self.top_k < 0:
            raise ConfigError(f"--top-k must be 0 (off) or a positive number of tokens, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"--top-p must be in (0, 1] (1 = off), got {self.top_p}; try 0.9 or 0.95")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ConfigError(f"--seed must be a non-negative integer below 2**63, got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


# ---------------------------------------------------------------------------------------------------------
# logits processors, in the order of the table above


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Scale logits (B, V) by 1 / temperature; temperature must be > 0 (0 is greedy, handled by `sample`)."""
    if temperature <= 0.0:
        raise ValueError(f"temperature must be positive here (0 means greedy), got {temperature}")
    return logits if temperature == 1.0 else logits / temperature


def apply_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the `top_k` largest logits of each row (B, V), -inf elsewhere; ties with the k-th are all kept."""
    if top_k == 0 or top_k >= logits.shape[-1]:
        return logits
    kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def apply_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches `top_p` (Holtzman et al., 2019).

    A token is kept when the probability of the tokens more likely than it is still below `top_p`, so the
    token that crosses the threshold is kept and the most likely token always is.
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    sorted_probs = torch.softmax(sorted_logits.float(), dim=-1)  # (B, V)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # (B, V) probability of better tokens
    remove_sorted = mass_before >= top_p  # (B, V)
    remove = remove_sorted.scatter(-1, order, remove_sorted)  # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


def process_logits(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Apply the logits processors of `config` in the documented order; logits (B, V) → (B, V)."""
    logits = apply_temperature(logits, config.temperature)
    logits = apply_top_k(logits, config.top_k)
    logits = apply_top_p(logits, config.top_p)
    return logits


# ---------------------------------------------------------------------------------------------------------
# sampling


def sample(
    logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pick the next token of each row of logits (B, V): argmax if greedy, else a draw; returns ids (B,)."""
    if config.greedy:
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(process_logits(logits.float(), config), dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (B,)
