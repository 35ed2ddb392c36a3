"""Sampling: the settings of one request, the logits processors, and `sample`.

Design choices:
- every processor is a pure function `(logits (B, V), setting) -> logits (B, V)` that returns a new tensor
  (or its input itself when the setting is off) and never edits its input, so each one can be tested
  against a hand-computed example and compiled alone;
- a setting is a Python number (the same for every row) or a tensor (B,) of one value per row, so a batch
  of requests with different settings is processed in one vectorised call; an "off" value turns the
  processor off for its row only;
- `process_logits` applies them in one fixed order (`sample` does the same):

  | order | processor                  | setting                                 | off when         |
  |-------|----------------------------|-----------------------------------------|------------------|
  | 0     | EOS mask (engine step)     | `min_new_tokens`                        | 0                |
  | 1     | `apply_logit_bias`         | `logit_bias`                            | () (no entries)  |
  | 2     | `apply_repetition_penalty` | `repetition_penalty`                    | 1.0              |
  | 3     | `apply_presence_frequency` | `presence_penalty`, `frequency_penalty` | 0.0 and 0.0      |
  | 4     | `apply_temperature`        | `temperature`                           | 1.0 (0 = greedy) |
  | 5     | `apply_top_k`              | `top_k`                                 | 0                |
  | 6     | `apply_top_p`              | `top_p`                                 | 1.0              |
  | 7     | `apply_min_p`              | `min_p`                                 | 0.0              |

  Why this order: the engine forbids end-of-sequence ids (-inf) before `min_new_tokens` new tokens, and
  nothing later can bring a -inf back. Logit bias is the user's explicit edit of the model's scores, so
  the penalties see the biased scores. The penalties (1-3) are defined on raw logits (Keskar et al. 2019;
  OpenAI's API) and must act under greedy decoding too, so they come before temperature. Then the order
  of Hugging Face `generate`: temperature reshapes the distribution before the cuts (5-7), so top-p and
  min-p thresholds are tempered probabilities; the cuts go from coarse to fine, each over what the
  previous one kept;
- temperature 0 is greedy decoding: `sample` applies steps 1-3 (they can change the argmax) and takes the
  argmax, skipping 4-7 (cuts always keep the argmax);
- otherwise `draw` samples each row by inverse transform (one uniform number from the row's own
  `torch.Generator`, then a search in the row's cumulative probabilities), so a request with a seed is
  reproducible whatever else runs in the process, and a batch costs one vectorised search instead of
  one `torch.multinomial` call per row (measured 18x faster at 16 rows of 8192 tokens);
- beside a compiled decode step, steps 4, 6 and 7 and the draw run as one compiled kernel instead
  (`forge.infer.fused_sample`), which finds the top-p cut by bisection rather than by sorting;
- `n`, beam search (`num_beams`, `length_penalty`, `early_stopping`), `stop` strings and
  `truncate_prompt` are settings of the engine; they are declared and validated here, with the rest of a
  request's settings.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from forge.errors import ConfigError

Setting = float | torch.Tensor  # one value for all rows, or a tensor (B,) of one value per row
MAX_STOP_STRINGS = 4


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    max_new_tokens: int = 128
    """generate at most this many tokens (fewer if the model emits end-of-text or the context fills up)"""
    min_new_tokens: int = 0
    """forbid end-of-text until this many tokens were generated (0 = off; at most max_new_tokens)"""
    temperature: float = 0.8
    """divide the logits by this before sampling: lower is more predictable, 0 is greedy decoding (0 to 2)"""
    top_k: int = 0
    """sample only among the k most likely tokens (0 = no limit)"""
    top_p: float = 1.0
    """nucleus sampling: sample from the smallest set of tokens whose probability reaches p (1 = off)"""
    min_p: float = 0.0
    """keep only tokens with probability >= min_p times that of the most likely token (0 = off; 0 to 1)"""
    repetition_penalty: float = 1.0
    """penalise every token already in the prompt or output: positive logits are divided by this,
    negative ones multiplied (CTRL, Keskar et al. 2019; 1 = off, try 1.1 to 1.3)"""
    presence_penalty: float = 0.0
    """subtract this from the logit of every token generated at least once (-2 to 2; 0 = off)"""
    frequency_penalty: float = 0.0
    """subtract this times the number of times a token was generated from its logit (-2 to 2; 0 = off)"""
    logit_bias: tuple[str, ...] = ()
    """add a bias to token logits, as TOKEN_ID:BIAS pairs with a bias in [-100, 100] (-100 bans a token),
    e.g. 50:-100,7:2.5"""
    stop: tuple[str, ...] = ()
    """stop when the output contains one of these strings (up to 4, not included in the output)"""
    stop_on_eos: bool = True
    """stop when the model emits end-of-text (or end-of-turn); off: always generate max_new_tokens"""
    n: int = 1
    """number of samples per prompt, sharing one prefill (with beam search: the n best beams)"""
    num_beams: int = 1
    """beam search with this many beams (1 = off; needs temperature 0)"""
    length_penalty: float = 1.0
    """beam search score = sum of log-probabilities / length**length_penalty (> 0 favours longer
    outputs, 0 = plain sum; -2 to 2)"""
    early_stopping: bool = False
    """beam search stops as soon as num_beams finished hypotheses exist"""
    truncate_prompt: bool = False
    """left-truncate a prompt longer than the model's context instead of refusing it"""
    seed: int | None = None
    """random seed of this generation, for reproducible samples (default: a fresh random seed)"""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ConfigError(
                f"--min-new-tokens must be between 0 (off) and --max-new-tokens ({self.max_new_tokens}), "
                f"got {self.min_new_tokens}"
            )
        if not 0.0 <= self.temperature <= 2.0:
            raise ConfigError(
                f"--temperature must be between 0 (greedy) and 2, got {self.temperature}; "
                "try 0.7 to 1.0 for varied but coherent text"
            )
        if self.top_k < 0:
            raise ConfigError(f"--top-k must be 0 (off) or a positive number of tokens, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"--top-p must be in (0, 1] (1 = off), got {self.top_p}; try 0.9 or 0.95")
        if not 0.0 <= self.min_p <= 1.0:
            raise ConfigError(f"--min-p must be in [0, 1] (0 = off), got {self.min_p}; try 0.05 or 0.1")
        if not (self.repetition_penalty > 0.0 and math.isfinite(self.repetition_penalty)):
            raise ConfigError(
                f"--repetition-penalty must be positive (1 = off), got {self.repetition_penalty}; "
                "try 1.1 to 1.3"
            )
        for flag, value in [
            ("--presence-penalty", self.presence_penalty),
            ("--frequency-penalty", self.frequency_penalty),
        ]:
            if not -2.0 <= value <= 2.0:
                raise ConfigError(f"{flag} must be between -2 and 2 (0 = off), got {value}; try 0.1 to 1")
        parse_logit_bias(self.logit_bias)
        self._check_stop_and_beams()
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ConfigError(f"--seed must be a non-negative integer below 2**63, got {self.seed}")

    def _check_stop_and_beams(self) -> None:
        if len(self.stop) > MAX_STOP_STRINGS or not all(self.stop):
            raise ConfigError(
                f"--stop takes up to {MAX_STOP_STRINGS} non-empty strings, got {list(self.stop)!r}"
            )
        if self.n < 1:
            raise ConfigError(f"--n (samples per prompt) must be at least 1, got {self.n}")
        if self.num_beams < 1:
            raise ConfigError(f"--num-beams must be at least 1 (1 = no beam search), got {self.num_beams}")
        if self.num_beams > 1 and self.temperature != 0.0:
            raise ConfigError(
                f"--num-beams {self.num_beams} (beam search) requires --temperature 0, got --temperature "
                f"{self.temperature}; add --temperature 0, or use --num-beams 1 to sample"
            )
        if self.num_beams > 1 and self.n > self.num_beams:
            raise ConfigError(f"--n ({self.n}) cannot exceed --num-beams ({self.num_beams}) in beam search")
        if not -2.0 <= self.length_penalty <= 2.0:
            raise ConfigError(
                f"--length-penalty must be between -2 and 2, got {self.length_penalty}; 1 scores beams by "
                "mean log-probability per token, 0 by their sum (favours short outputs)"
            )
        if self.num_beams == 1 and (self.length_penalty != 1.0 or self.early_stopping):
            raise ConfigError(
                "--length-penalty and --early-stopping apply to beam search only; add --num-beams 2 or more"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def logit_bias_map(self) -> dict[int, float]:
        """`logit_bias` parsed: {token id: bias}."""
        return parse_logit_bias(self.logit_bias)


def parse_logit_bias(entries: tuple[str, ...]) -> dict[int, float]:
    """Parse TOKEN_ID:BIAS strings into {token id: bias}; raise ConfigError naming --logit-bias if bad."""
    biases: dict[int, float] = {}
    for entry in entries:
        token, separator, value = entry.partition(":")
        try:
            token_id, bias = int(token), float(value)
        except ValueError:
            token_id, bias = -1, math.nan
        if not separator or token_id < 0 or not -100.0 <= bias <= 100.0:
            raise ConfigError(
                f"--logit-bias entries are TOKEN_ID:BIAS with a token id >= 0 and a bias in [-100, 100], "
                f"got {entry!r}; e.g. --logit-bias 50:-100,7:2.5"
            )
        if token_id in biases:
            raise ConfigError(f"--logit-bias gives token {token_id} twice; give each token once")
        biases[token_id] = bias
    return biases


# ---------------------------------------------------------------------------------------------------------
# logits processors, in the order of the table above


def _is_off(setting: Setting, off: float) -> bool:
    """True for a number equal to `off`; a tensor is never skipped (checking it would wait for the device)."""
    return not isinstance(setting, torch.Tensor) and setting == off


def _column(setting: Setting, like: torch.Tensor) -> torch.Tensor:
    """A setting as a column to broadcast over (B, V): (B, 1) from a tensor (B,), (1, 1) from a number."""
    return torch.as_tensor(setting, dtype=like.dtype, device=like.device).reshape(-1, 1)


def apply_logit_bias(logits: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Add `bias` (V,) (the same for every row) or (B, V) to logits (B, V)."""
    return logits + bias.to(device=logits.device, dtype=logits.dtype)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: Setting) -> torch.Tensor:
    """CTRL's penalized sampling (Keskar et al. 2019) over the tokens `seen` (B, V) bool.

    The logit of a seen token is divided by `penalty` when positive and multiplied by it when negative,
    so a penalty above 1 always makes it less likely; unseen tokens are unchanged.
    """
    if _is_off(penalty, 1.0):
        return logits
    p = _column(penalty, logits)  # (B, 1)
    penalised = torch.where(logits > 0, logits / p, logits * p)  # (B, V)
    return torch.where(seen.to(logits.device), penalised, logits)


def apply_presence_frequency(
    logits: torch.Tensor, counts: torch.Tensor, presence: Setting, frequency: Setting
) -> torch.Tensor:
    """OpenAI presence and frequency penalties over `counts` (B, V), how often each token was generated.

    logit -= presence * (count > 0) + frequency * count; negative values make repeats more likely.
    """
    if _is_off(presence, 0.0) and _is_off(frequency, 0.0):
        return logits
    counts = counts.to(device=logits.device, dtype=logits.dtype)  # (B, V)
    return logits - _column(presence, logits) * (counts > 0) - _column(frequency, logits) * counts


def apply_temperature(logits: torch.Tensor, temperature: Setting) -> torch.Tensor:
    """Scale logits (B, V) by 1 / temperature; temperature must be > 0 (0 is greedy, handled by `sample`)."""
    positive = bool((temperature > 0).all()) if isinstance(temperature, torch.Tensor) else temperature > 0
    if not positive:
        raise ValueError(f"temperature must be positive here (0 means greedy), got {temperature}")
    return logits if _is_off(temperature, 1.0) else logits / _column(temperature, logits)


def apply_top_k(logits: torch.Tensor, top_k: int | torch.Tensor) -> torch.Tensor:
    """Keep the `top_k` largest logits of each row (B, V), -inf elsewhere; ties with the k-th are all kept.

    `top_k` per row (B,) turns the cut off (0) row by row.
    """
    V = logits.shape[-1]
    if not isinstance(top_k, torch.Tensor):
        if top_k == 0 or top_k >= V:
            return logits
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
    else:
        k = top_k.to(device=logits.device, dtype=torch.long).clamp(0, V)[:, None]  # (B, 1)
        sorted_logits = torch.sort(logits, dim=-1, descending=True).values  # (B, V)
        kth_largest = sorted_logits.gather(-1, (k - 1).clamp(min=0))  # (B, 1)
        kth_largest = kth_largest.masked_fill(k == 0, float("-inf"))  # rows with 0 keep everything
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def apply_top_p(logits: torch.Tensor, top_p: Setting) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches `top_p` (Holtzman et al., 2019).

    A token is kept when the probability of the tokens more likely than it is still below `top_p`, so the
    token that crosses the threshold is kept and the most likely token always is.

    Sorting the whole vocabulary costs 0.35 ms a row on a CPU (8192 tokens), a third of a small model's
    decode step, so `_top_p_by_bracket` first finds the crossing token among the few whose probability
    lies in one band, and the full sort runs only when that band is crowded.
    """
    if _is_off(top_p, 1.0):
        return logits
    bracketed = _top_p_by_bracket(logits, top_p)
    return bracketed if bracketed is not None else _top_p_by_sorting(logits, top_p)


def _top_p_by_bracket(
    logits: torch.Tensor, top_p: Setting, bands: int = 256, most: int = 1024
) -> torch.Tensor | None:
    """`apply_top_p` without sorting the vocabulary; None when the band of the crossing token holds more
    than `most` tokens in some row (a row of nearly equal probabilities), where sorting costs as much.

    Each token falls into one of `bands` bands by its log-probability, evenly between the row's most and
    least likely tokens: band ⌊`bands` · log(p_max / p) / log(p_max / p_min)⌋ (tokens of probability 0
    in the last). A band's tokens are all more likely than the next band's, so one pass of sums gives the
    mass of every band and the band where the cumulative mass reaches `top_p`: the tokens of earlier
    bands are kept (the mass before any of them is below `top_p`), those of later bands are cut (the mass
    before them already reaches it), and only the crossing band's tokens are ordered, starting from the
    mass of the bands before it. The same cut as sorting everything, up to float rounding at the
    threshold and to which of several exactly equal probabilities falls on which side of it.
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # (B, V)
    probs = log_probs.exp()
    below_top = log_probs.amax(dim=-1, keepdim=True) - log_probs  # (B, V), ≥ 0 (inf where p is 0)
    span = below_top.masked_fill(below_top.isinf(), 0.0).amax(dim=-1, keepdim=True)  # (B, 1)
    scale = bands / span.clamp(min=1e-6)  # a row of equal probabilities: one band, too crowded
    # (B, V), grows as p falls; the values are ≥ 0, so truncating to an integer is the floor
    band = (below_top * scale).clamp(max=bands - 1).long()
    # (B, 1 + bands): column j holds the mass of the bands before band j (column 0: none)
    band_mass = torch.zeros(probs.shape[0], bands + 1, dtype=probs.dtype, device=probs.device)
    cumulative = band_mass.scatter_add_(-1, band + 1, probs).cumsum(dim=-1)
    off: torch.Tensor | None = None  # (B, 1): rows that keep everything; a number needs no per-row "off"
    p: Setting = top_p
    if isinstance(top_p, torch.Tensor):
        column = _column(top_p, probs)
        off = column >= 1.0
        p = column.masked_fill(off, 0.0)  # an off row crosses at band 0; `off` keeps it whole
    crossing = (cumulative[:, 1:] < p).sum(dim=-1, keepdim=True)  # (B, 1): first band whose mass ≥ p
    if bool((crossing >= bands).any()):  # rounding left the total below p (p within 1e-7 of 1)
        return None
    in_band = band == crossing if off is None else (band == crossing) & ~off  # (B, V)
    crowd = int(in_band.sum(dim=-1).max())
    if crowd > most:
        return None
    band_probs, band_ids = probs.masked_fill(~in_band, -1.0).topk(crowd, dim=-1)  # (B, crowd), descending
    before = cumulative.gather(-1, crossing) + band_probs.cumsum(dim=-1) - band_probs  # mass more likely
    keep_band = (before < p) & (band_probs >= 0)  # the padding (-1) of rows with fewer band tokens: cut
    keep = (band < crossing) | torch.zeros_like(in_band).scatter(-1, band_ids, keep_band)
    return logits.masked_fill(~keep if off is None else ~(keep | off), float("-inf"))


def _top_p_by_sorting(logits: torch.Tensor, top_p: Setting) -> torch.Tensor:
    """`apply_top_p` by sorting every row (any `top_p`, one per row included)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    sorted_probs = torch.softmax(sorted_logits.float(), dim=-1)  # (B, V)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # (B, V) probability of better tokens
    p = _column(top_p, sorted_probs)  # (B, 1)
    remove_sorted = (mass_before >= p) & (p < 1.0)  # (B, V); p = 1 is off even if rounding reaches 1
    remove = remove_sorted.scatter(-1, order, remove_sorted)  # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


def apply_min_p(logits: torch.Tensor, min_p: Setting) -> torch.Tensor:
    """Keep the tokens whose probability is at least `min_p` times the top one's (Nguyen et al., 2024)."""
    if _is_off(min_p, 0.0):
        return logits
    probs = torch.softmax(logits.float(), dim=-1)  # (B, V)
    threshold = _column(min_p, probs) * probs.amax(dim=-1, keepdim=True)  # (B, 1)
    return logits.masked_fill(probs < threshold, float("-inf"))


# ---------------------------------------------------------------------------------------------------------
# a request's settings, applied in order


def count_tokens(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """How often each vocabulary id occurs in each row of ids (B, T) → counts (B, V) int64.

    Ids < 0 (padding) are not counted; `count_tokens(...) > 0` is the `seen` mask of the repetition penalty.
    """
    counts = torch.zeros(ids.shape[0], vocab_size, dtype=torch.long, device=ids.device)  # (B, V)
    return counts.scatter_add_(1, ids.clamp(min=0), (ids >= 0).long())


@lru_cache(maxsize=16)
def _logit_bias_vector(logit_bias: tuple[str, ...], vocab_size: int, device: torch.device) -> torch.Tensor:
    """The dense bias (V,) of `--logit-bias` entries, built once per (entries, vocabulary, device)."""
    biases = parse_logit_bias(logit_bias)
    outside = sorted(i for i in biases if i >= vocab_size)
    if outside:
        raise ConfigError(
            f"--logit-bias names token ids {outside[:5]} outside the model's vocabulary (ids 0 to "
            f"{vocab_size - 1}); was it written for another tokenizer?"
        )
    bias = torch.zeros(vocab_size)
    bias[list(biases)] = torch.tensor(list(biases.values()))
    return bias.to(device)


class TokenStats:
    """The token statistics the penalties read, one row per sequence: `seen` (B, V) bool marks the tokens
    of the prompt and the output (repetition penalty), `counts` (B, V) how often each was generated
    (presence and frequency penalties). One object for the single-request engine, the batch engine and
    the server's slots."""

    def __init__(self, rows: int, vocab_size: int, device: torch.device | str | None = None) -> None:
        self.seen = torch.zeros(rows, vocab_size, dtype=torch.bool, device=device)
        self.counts = torch.zeros(rows, vocab_size, dtype=torch.int32, device=device)

    def start(self, row: int, prompt_ids: Sequence[int]) -> None:
        """Reset `row` for a new sequence with this prompt."""
        self.seen[row] = False
        self.seen[row, list(prompt_ids)] = True
        self.counts[row] = 0

    def add(self, rows: torch.Tensor | int, token_ids: torch.Tensor | int) -> None:
        """Record that each of `rows` generated the matching one of `token_ids`."""
        self.seen[rows, token_ids] = True
        self.counts[rows, token_ids] += 1

    def select(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`seen` and `counts` of `rows` (copies), for `sample` / `process_logits`."""
        return self.seen[rows], self.counts[rows]


def _needed(stats: torch.Tensor | None, name: str, setting: str) -> torch.Tensor:
    if stats is None:
        raise ValueError(f"{setting} needs `{name}`, the token statistics of each row (B, V)")
    return stats


def _penalise(
    logits: torch.Tensor, config: SamplingConfig, seen: torch.Tensor | None, counts: torch.Tensor | None
) -> torch.Tensor:
    """Steps 1-3 of the table: logit bias, repetition penalty, presence and frequency penalties."""
    if config.logit_bias:
        bias = _logit_bias_vector(config.logit_bias, logits.shape[-1], logits.device)  # (V,)
        logits = apply_logit_bias(logits, bias)
    if config.repetition_penalty != 1.0:
        seen = _needed(seen, "seen", "repetition_penalty")
        logits = apply_repetition_penalty(logits, seen, config.repetition_penalty)
    if config.presence_penalty != 0.0 or config.frequency_penalty != 0.0:
        counts = _needed(counts, "counts", "presence_penalty / frequency_penalty")
        logits = apply_presence_frequency(logits, counts, config.presence_penalty, config.frequency_penalty)
    return logits


def process_logits(
    logits: torch.Tensor,
    config: SamplingConfig,
    *,
    seen: torch.Tensor | None = None,
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply the processors of `config` in the documented order; logits (B, V) → (B, V).

    `seen` (B, V) bool marks the tokens of the prompt and output (needed by the repetition penalty),
    `counts` (B, V) the number of times each token was generated (needed by presence / frequency). With
    temperature 0 (greedy) only steps 1-3 apply: the result is what `sample` takes the argmax of.
    """
    logits = _penalise(logits, config, seen, counts)
    if config.greedy:
        return logits
    logits = apply_temperature(logits, config.temperature)
    logits = apply_top_k(logits, config.top_k)
    logits = apply_top_p(logits, config.top_p)
    return apply_min_p(logits, config.min_p)


# ---------------------------------------------------------------------------------------------------------
# sampling


def draw(probs: torch.Tensor, generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """One token per row of probs (B, V) (any non-negative weights), row i drawn with `generators[i]`.

    Inverse transform sampling: u ~ U[0, 1) from the row's generator, then the first token whose
    cumulative probability exceeds u times the row's total (float64, so rounding never reaches a token of
    probability 0). Returns ids (B,).
    """
    if len(generators) != probs.shape[0]:
        raise ValueError(f"{probs.shape[0]} rows of probabilities but {len(generators)} generators")
    return inverse_transform(probs, uniforms(generators, probs.device))


def row_generators(
    generator: torch.Generator | Sequence[torch.Generator | None] | None, rows: int
) -> Sequence[torch.Generator | None]:
    """One generator per row: `generator` itself when it is one per row, else it repeated `rows` times."""
    return generator if isinstance(generator, Sequence) else [generator] * rows


def uniforms(generators: Sequence[torch.Generator | None], device: torch.device) -> torch.Tensor:
    """One float64 number u ~ U[0, 1) from each generator, in order: (B,)."""
    return torch.stack([torch.rand((), generator=g, dtype=torch.float64, device=device) for g in generators])


def inverse_transform(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The first token of each row of probs (B, V) whose cumulative weight exceeds uniform (B,) times the
    row's total: ids (B,)."""
    cdf = probs.double().cumsum(dim=-1)  # (B, V)
    targets = (uniform * cdf[:, -1])[:, None]  # (B, 1)
    ids = torch.searchsorted(cdf, targets, right=True).squeeze(-1)  # first index with cdf > target
    return ids.clamp(max=probs.shape[-1] - 1)


def sample(
    logits: torch.Tensor,
    config: SamplingConfig,
    generator: torch.Generator | Sequence[torch.Generator | None] | None = None,
    *,
    seen: torch.Tensor | None = None,
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pick the next token of each row of logits (B, V): argmax if greedy, else a draw; returns ids (B,).

    `generator` is one generator for every row (drawn in row order) or one per row; `seen` and `counts`
    are those of `process_logits`; the penalties apply under greedy decoding too.
    """
    logits = process_logits(logits.float(), config, seen=seen, counts=counts)  # (B, V)
    if config.greedy:
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    return draw(probs, row_generators(generator, probs.shape[0]))  # (B,)
