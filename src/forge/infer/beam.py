"""Beam search: keep the `num_beams` most likely continuations, return the best `n` with their scores.

Design choices:
- one prefill; the cache then holds one row per live beam and is reordered (`index_select` along the
  batch) after every step, so each beam attends to its own history;
- scores are sums of log-probabilities of the raw model (no temperature, no truncation: beam search is
  a search for likely text, not a sample); a hypothesis that ends with an end-of-sequence id is finished
  with score `sum_logprob / length ** length_penalty` (length = generated tokens, EOS excluded), so
  `length_penalty` > 1 favours longer answers and < 1 shorter ones, as in Hugging Face `generate`;
- each step takes the 2·num_beams best candidates, so that num_beams live beams remain even when some
  candidates end;
- stopping: with `early_stopping` as soon as num_beams hypotheses are finished; without it, once no live
  beam can still beat the worst of the num_beams best finished ones (its score can only fall), or at
  `max_new_tokens` / the end of the context, where live beams are finished with reason "length".
"""

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from forge.errors import ConfigError
from forge.infer.engine import FinishReason, decode_one_token, model_device, prefill, prepare_prompt
from forge.infer.kv_cache import KVCache
from forge.infer.sampling import SamplingConfig

if TYPE_CHECKING:
    from forge.model.transformer import Transformer


@dataclass(frozen=True)
class Hypothesis:
    """A finished beam: generated ids (EOS excluded), summed log-probability, length-penalised score."""

    token_ids: list[int]
    logprob: float
    score: float
    finish_reason: FinishReason


def _score(logprob: float, length: int, length_penalty: float) -> float:
    return logprob / max(length, 1) ** length_penalty


@torch.inference_mode()
def beam_search(
    model: "Transformer",
    prompt_ids: list[int],
    config: SamplingConfig,
    *,
    eos_ids: Collection[int] = (),
    device: torch.device | str | None = None,
) -> list[Hypothesis]:
    """The `config.n` best of `config.num_beams` beams continuing `prompt_ids`, best first."""
    K, n = config.num_beams, config.n
    if n > K:
        raise ConfigError(
            f"--n {n} is more than --num-beams {K}; beam search returns at most num_beams answers"
        )
    context = model.config.context_length
    prompt_ids = prepare_prompt(model, prompt_ids, config)
    device = model_device(model, device)
    eos = sorted(eos_ids) if config.stop_on_eos else []
    max_seq_len = min(len(prompt_ids) + config.max_new_tokens, context)
    cache = KVCache.for_model(model, batch_size=1, max_seq_len=max_seq_len)
    logits = prefill(model, torch.tensor([prompt_ids], device=device), cache)  # (1, V): one live beam
    beams: list[list[int]] = [[]]
    sums = torch.zeros(1, device=device)  # (b,) summed log-probabilities of the live beams
    finished: list[Hypothesis] = []
    position = len(prompt_ids)  # where the next tokens are fed
    live_are_results = False  # whether the live beams end as "length" hypotheses
    for step in range(config.max_new_tokens):
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # (b, V)
        if eos and step < config.min_new_tokens:
            logprobs[:, eos] = float("-inf")
        candidates = (sums[:, None] + logprobs).flatten()  # (b * V,)
        top = torch.topk(candidates, min(2 * K, candidates.numel()))
        vocab = logprobs.shape[1]
        keep: list[tuple[int, int, float]] = []  # (beam, token, summed logprob)
        for total, flat in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            beam, token = divmod(flat, vocab)
            if token in eos:
                ids = beams[beam]
                finished.append(
                    Hypothesis(ids, total, _score(total, len(ids), config.length_penalty), "stop")
                )
            elif total > float("-inf"):
                keep.append((beam, token, total))
            if len(keep) == K:
                break
        if not keep or _done(finished, keep, step + 1, config):
            break
        if step + 1 == config.max_new_tokens or position >= context:
            beams, sums = [beams[b] + [t] for b, t, _ in keep], torch.tensor([s for _, _, s in keep])
            live_are_results = True
            break
        order = torch.tensor([b for b, _, _ in keep], device=device)
        cache.select_rows(order)
        beams = [beams[b] + [t] for b, t, _ in keep]
        sums = torch.tensor([s for _, _, s in keep], device=device)
        tokens = torch.tensor([t for _, t, _ in keep], device=device)
        logits = decode_one_token(model, tokens, torch.full_like(tokens, position), cache)
        position += 1
    if live_are_results:
        finished += [
            Hypothesis(ids, s, _score(s, len(ids), config.length_penalty), "length")
            for ids, s in zip(beams, sums.tolist(), strict=True)
        ]
    return sorted(finished, key=lambda h: h.score, reverse=True)[:n]


def _done(
    finished: list[Hypothesis], live: list[tuple[int, int, float]], length: int, config: SamplingConfig
) -> bool:
    """Whether the search can stop (see the module docstring)."""
    if len(finished) < config.num_beams:
        return False
    if config.early_stopping:
        return True
    worst_kept = sorted(h.score for h in finished)[-config.num_beams]
    best_live = max(_score(s, length, config.length_penalty) for _, _, s in live)
    return best_live <= worst_kept
