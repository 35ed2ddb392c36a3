"""Batched generation: many prompts of different lengths, each with its own sampling settings.

Design choices:
- prompts are right-padded and prefilled together (positions 0..T-1 for every row; each row's logits
  are read at its own last prompt token); decode steps then feed every row at its own position, so no
  left padding and no position offsets are needed (see `forge.infer.engine.prefill`);
- `n` samples of one prompt share its prefill: the prompt's cache row is copied n times afterwards;
- every sample has its own `torch.Generator`, seeded `seed + sample_index`, and draws from its own row
  of probabilities: a seeded request gives the same tokens alone or in any batch (up to the float
  differences of batched matmuls, which in practice do not change a draw);
- rows that share a `SamplingConfig` are processed together (one call of `process_logits`), so a batch
  with one setting runs the processors once per step whatever its size;
- a finished row keeps its slot until the whole batch ends (its results are frozen): simple, and
  without the copies that compacting the cache would cost. The server's scheduler, which admits new
  requests as others finish, is the place for slot reuse.
"""

import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from forge.infer.detok import StopStrings, StreamDecoder
from forge.infer.engine import (
    DecodeFn,
    FinishReason,
    cache_length,
    decode_one_token,
    model_device,
    prefill,
    prepare_prompt,
)
from forge.infer.fused_sample import compiled_sample
from forge.infer.kv_cache import KVCache
from forge.infer.sampling import SamplingConfig, TokenStats, sample

if TYPE_CHECKING:
    from forge.model.transformer import Transformer


@dataclass
class Completion:
    """One finished sample: its ids (end-of-sequence excluded), text when asked, and why it ended."""

    request: int
    """index of the prompt in the batch"""
    sample: int
    """0..n-1 among the samples of that prompt"""
    seed: int
    """the seed its generator used (to reproduce it alone)"""
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: FinishReason | None = None
    stop_string: str | None = None


class Row:
    """Per-sample state while generating: output, text stream, stop strings."""

    def __init__(
        self, completion: Completion, config: SamplingConfig, token_bytes: list[bytes] | None
    ) -> None:
        self.completion, self.config = completion, config
        self.decoder = StreamDecoder(token_bytes) if token_bytes is not None else None
        self.stops = StopStrings(config.stop) if config.stop and token_bytes is not None else None
        self.generator: torch.Generator | None = None

    @property
    def done(self) -> bool:
        return self.completion.finish_reason is not None

    def add(self, token_id: int) -> str:
        """Record a generated token and return the text it completes; finish with "stop" when it
        completes a stop string."""
        self.completion.token_ids.append(token_id)
        if self.decoder is None:
            return ""
        piece = self.decoder.push(token_id)
        if self.stops is not None:
            piece = self.stops.push(piece)
            if self.stops.stopped:
                self.completion.finish_reason, self.completion.stop_string = "stop", self.stops.matched
        self.completion.text += piece
        return piece

    def accept(self, token_id: int, eos_ids: Collection[int], *, can_continue: bool) -> tuple[bool, str]:
        """Take the sampled token. End-of-sequence (with `stop_on_eos`) finishes with "stop"; any other
        token is recorded, and the sample finishes with "length" at `max_new_tokens` or when it
        cannot continue (the context is full). Returns whether the token was kept and the text emitted."""
        if token_id in eos_ids and self.config.stop_on_eos:
            return False, self.finish("stop")
        text = self.add(token_id)
        if not self.done and (
            len(self.completion.token_ids) >= self.config.max_new_tokens or not can_continue
        ):
            text += self.finish("length")
        return True, text

    def finish(self, reason: FinishReason) -> str:
        """End the sample with `reason`; return the text held back until now (a partial character or
        a possible stop string that did not complete)."""
        self.completion.finish_reason = reason
        if self.decoder is None:
            return ""
        tail = self.decoder.flush()
        if self.stops is not None:
            tail = self.stops.finish(tail)
            if self.stops.stopped:  # the held-back text completed a stop string after all
                self.completion.finish_reason, self.completion.stop_string = "stop", self.stops.matched
        self.completion.text += tail
        return tail


def forbid_early_eos(logits: torch.Tensor, rows: Sequence[Row], eos_ids: Sequence[int]) -> None:
    """Set the end-of-sequence logits of rows that have not reached `min_new_tokens` to -inf, in place."""
    for i, row in enumerate(rows):
        if eos_ids and len(row.completion.token_ids) < row.config.min_new_tokens:
            logits[i, list(eos_ids)] = float("-inf")


def pick_tokens(
    logits: torch.Tensor,
    rows: Sequence[Row],
    stats: TokenStats,
    slots: torch.Tensor,
    *,
    compiled: bool = False,
) -> list[int]:
    """The next token of every row of logits (B, V): rows with equal settings are processed together,
    each drawn with its own generator; row i's token statistics are `stats` row `slots[i]`. `compiled`:
    with `compiled_sample` (beside a compiled decode step) instead of `sample`."""
    sample_fn = compiled_sample if compiled else sample
    groups: dict[SamplingConfig, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.config, []).append(i)
    picked = [0] * len(rows)
    for config, members in groups.items():
        index = torch.tensor(members, device=logits.device)
        sub_seen, sub_counts = stats.select(slots[index])
        generators = [rows[i].generator for i in members]
        ids = sample_fn(logits[index], config, generators, seen=sub_seen, counts=sub_counts).tolist()
        for i, token_id in zip(members, ids, strict=True):
            picked[i] = int(token_id)
    return picked


@torch.inference_mode()
def generate_batch(
    model: "Transformer",
    prompts: Sequence[list[int]],
    configs: SamplingConfig | Sequence[SamplingConfig],
    *,
    eos_ids: Collection[int] = (),
    token_bytes: list[bytes] | None = None,
    device: torch.device | str | None = None,
    decode_fn: DecodeFn | None = None,
) -> list[Completion]:
    """Generate for every prompt (`config.n` samples each); returns the completions, prompt by prompt.

    Text and stop strings need `token_bytes` (`Tokenizer.token_bytes()`); without it only ids are kept.
    A `decode_fn` (e.g. `compile_decode(model)`) replaces the eager decode step and gets a cache of
    bucketed length (`forge.infer.engine.cache_length`), so few shapes are ever compiled.
    """
    if isinstance(configs, SamplingConfig):
        configs = [configs] * len(prompts)
    if len(configs) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(configs)} sampling configs")
    context, vocab = model.config.context_length, model.config.vocab_size
    prompts = [prepare_prompt(model, list(p), c) for p, c in zip(prompts, configs, strict=True)]
    device = model_device(model, device)
    eos = sorted(eos_ids)

    # prefill the distinct prompts together, then give each sample its own copy of its prompt's row
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    needed = max(len(p) + c.max_new_tokens for p, c in zip(prompts, configs, strict=True))
    max_seq_len = cache_length(needed, context, bucketed=decode_fn is not None)
    cache = KVCache.for_model(model, batch_size=len(prompts), max_seq_len=max_seq_len)
    padded = torch.zeros(len(prompts), int(lengths.max()), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        padded[i, : len(p)] = torch.tensor(p, device=device)
    logits = prefill(model, padded, cache, lengths)  # (B, V)

    rows: list[Row] = []
    for r, config in enumerate(configs):
        base_seed = secrets.randbits(62) if config.seed is None else config.seed
        for j in range(config.n):
            row = Row(Completion(request=r, sample=j, seed=base_seed + j), config, token_bytes)
            row.generator = torch.Generator(device=device).manual_seed(base_seed + j)
            rows.append(row)
    owner = torch.tensor([row.completion.request for row in rows], device=device)
    if len(rows) != len(prompts):
        cache.select_rows(owner)
        logits = logits.index_select(0, owner)
    positions = lengths.index_select(0, owner).clone()  # where each row's next token will be fed

    stats = TokenStats(len(rows), vocab, device)
    for i, row in enumerate(rows):
        stats.start(i, prompts[row.completion.request])

    penalised = any(c.repetition_penalty != 1.0 or c.presence_penalty or c.frequency_penalty for c in configs)
    every_row = torch.arange(len(rows), device=device)
    fed = positions.tolist()  # the same positions, on the host

    while True:
        forbid_early_eos(logits, rows, eos)
        picked = pick_tokens(logits, rows, stats, every_row, compiled=decode_fn is not None)
        for i, (row, token_id) in enumerate(zip(rows, picked, strict=True)):
            if not row.done:
                row.accept(token_id, eos, can_continue=fed[i] < context)
        if all(row.done for row in rows):
            return [row.completion for row in rows]
        tokens = torch.tensor(picked, dtype=torch.long, device=device)
        if penalised:  # finished rows are counted too: harmless, their output is frozen
            stats.add(every_row, tokens)
        # finished rows still run (their output is frozen); keep their writes inside the cache
        at = positions.clamp(max=max_seq_len - 1)
        logits = (decode_fn or decode_one_token)(model, tokens, at, cache)
        positions += 1
        fed = [f + 1 for f in fed]
