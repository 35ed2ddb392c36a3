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
from forge.infer.engine import FinishReason, decode_one_token, model_device, prefill, prepare_prompt
from forge.infer.kv_cache import KVCache
from forge.infer.sampling import SamplingConfig, process_logits, sample

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


class _Row:
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

    def add(self, token_id: int) -> None:
        """Record a generated token; finish with "stop" when it completes a stop string."""
        self.completion.token_ids.append(token_id)
        if self.decoder is None:
            return
        piece = self.decoder.push(token_id)
        if self.stops is not None:
            piece = self.stops.push(piece)
            if self.stops.stopped:
                self.completion.finish_reason, self.completion.stop_string = "stop", self.stops.matched
        self.completion.text += piece

    def finish(self, reason: FinishReason) -> None:
        self.completion.finish_reason = reason
        if self.decoder is not None:
            tail = self.decoder.flush()
            if self.stops is not None:
                tail = self.stops.finish(tail)
                if self.stops.stopped:  # the held-back text completed a stop string after all
                    self.completion.finish_reason, self.completion.stop_string = "stop", self.stops.matched
            self.completion.text += tail


def _pick(logits: torch.Tensor, rows: list[_Row], seen: torch.Tensor, counts: torch.Tensor) -> list[int]:
    """The next token of every row: rows with equal settings are processed together, drawn one by one."""
    groups: dict[SamplingConfig, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.config, []).append(i)
    picked = [0] * len(rows)
    for config, members in groups.items():
        index = torch.tensor(members, device=logits.device)
        sub_seen, sub_counts = seen[index], counts[index]
        if config.greedy:
            ids = sample(logits[index], config, None, seen=sub_seen, counts=sub_counts).tolist()
        else:
            probs = torch.softmax(
                process_logits(logits[index].float(), config, seen=sub_seen, counts=sub_counts), -1
            )
            ids = [
                int(torch.multinomial(probs[k], 1, generator=rows[i].generator))
                for k, i in enumerate(members)
            ]
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
) -> list[Completion]:
    """Generate for every prompt (`config.n` samples each); returns the completions, prompt by prompt.

    Text and stop strings need `token_bytes` (`Tokenizer.token_bytes()`); without it only ids are kept.
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
    max_seq_len = max(min(len(p) + c.max_new_tokens, context) for p, c in zip(prompts, configs, strict=True))
    cache = KVCache.for_model(model, batch_size=len(prompts), max_seq_len=max_seq_len)
    padded = torch.zeros(len(prompts), int(lengths.max()), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        padded[i, : len(p)] = torch.tensor(p, device=device)
    logits = prefill(model, padded, cache, lengths)  # (B, V)

    rows: list[_Row] = []
    for r, config in enumerate(configs):
        base_seed = secrets.randbits(62) if config.seed is None else config.seed
        for j in range(config.n):
            row = _Row(Completion(request=r, sample=j, seed=base_seed + j), config, token_bytes)
            row.generator = torch.Generator(device=device).manual_seed(base_seed + j)
            rows.append(row)
    owner = torch.tensor([row.completion.request for row in rows], device=device)
    if len(rows) != len(prompts):
        cache.k, cache.v = cache.k.index_select(1, owner), cache.v.index_select(1, owner)
        logits = logits.index_select(0, owner)
    positions = lengths.index_select(0, owner).clone()  # where each row's next token will be fed

    seen = torch.zeros(len(rows), vocab, dtype=torch.bool, device=device)  # prompt and output (repetition)
    counts = torch.zeros(len(rows), vocab, dtype=torch.int32, device=device)  # output only (presence/freq)
    for i, row in enumerate(rows):
        seen[i, prompts[row.completion.request]] = True
    eos_index = torch.tensor(eos, dtype=torch.long, device=device)

    while True:
        for i, row in enumerate(rows):  # end-of-sequence is not allowed before min_new_tokens
            if eos and len(row.completion.token_ids) < row.config.min_new_tokens:
                logits[i, eos_index] = float("-inf")
        picked = _pick(logits, rows, seen, counts)
        for i, (row, token_id) in enumerate(zip(rows, picked, strict=True)):
            if row.done:
                continue
            if token_id in eos and row.config.stop_on_eos:
                row.finish("stop")
                continue
            row.add(token_id)
            seen[i, token_id] = True
            counts[i, token_id] += 1
            if row.done:  # a stop string
                continue
            if len(row.completion.token_ids) >= row.config.max_new_tokens or int(positions[i]) >= context:
                row.finish("length")
        if all(row.done for row in rows):
            return [row.completion for row in rows]
        tokens = torch.tensor(picked, dtype=torch.long, device=device)
        # finished rows still run (their output is frozen); keep their writes inside the cache
        at = positions.clamp(max=max_seq_len - 1)
        logits = decode_one_token(model, tokens, at, cache)
        positions += 1
