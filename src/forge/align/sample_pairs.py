"""Two sampled answers per prompt: the pairs people judge (`forge label serve`) and the synthetic
preferences the readable rule picks from (`forge label synth`).

Design choices:
- answers come from the batch engine (`forge.infer.batch.generate_batch`): one request per pair with
  n = 2, so A and B share the prompt's prefill and differ by their seeds (`seed + 2k` and `seed + 2k + 1`
  for the k-th pair of the run: reproducible, and never the same two seeds twice);
- prompts are rendered with the chat template, their oldest turns dropped to leave room for the answer
  (as `forge chat` does); a prompt that cannot fit is counted and skipped, not fatal;
- a pair whose two answers are the same text is useless to judge and is dropped (counted);
- `synthesize` keeps the pairs the rule of `forge.align.rule` separates. That rule stands in for human
  judgements: it checks the form of an answer (valid Python that defines the asked function, finished,
  not repetitive), not its truth. With `every_pair` it compares every two answers of a prompt, not just
  the pairs as sampled: `--pairs-per-prompt 2` then gives 6 comparisons from 4 answers instead of 2, for
  no more sampling (each answer is judged once). With `renamed` it adds a contrast pair for each answer
  the rule passes: that answer against itself with the asked name replaced by a near miss
  (`forge.align.contrast`), marked `"origin": "renamed"`.
"""

import itertools
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from forge.align.contrast import name_parts, renamed_answer
from forge.align.formats import prompt_key
from forge.align.preferences import Messages, NewPair
from forge.align.rule import asked_name, compare, judge
from forge.config import to_dict
from forge.errors import ConfigError, ForgeError
from forge.infer.batch import generate_batch
from forge.infer.sampling import SamplingConfig
from forge.io import atomic_path, write_json
from forge.tokenizer.chat import fit_messages, render

if TYPE_CHECKING:
    from forge.model.transformer import Transformer
    from forge.tokenizer.bpe import Tokenizer


@dataclass(frozen=True, kw_only=True)
class PairConfig:
    """How the two answers of each pair are sampled."""

    pairs_per_prompt: int = 1
    """pairs of answers sampled for each prompt"""
    temperature: float = 1.0
    """sampling temperature (above 0, so the two answers differ)"""
    top_p: float = 0.95
    """nucleus sampling threshold (1 = off)"""
    max_new_tokens: int = 160
    """most tokens per answer; an answer cut at this limit counts as unfinished"""
    seed: int = 0
    """seed of the first pair; pair k uses seed + 2k for A and seed + 2k + 1 for B"""
    limit: int = 0
    """use only the first N prompts (0 = all)"""
    batch_size: int = 16
    """pairs generated together in one batch"""

    def __post_init__(self) -> None:
        if self.pairs_per_prompt < 1:
            raise ConfigError(f"--pairs-per-prompt must be at least 1, got {self.pairs_per_prompt}")
        if self.temperature <= 0:
            raise ConfigError(f"--temperature must be above 0 so A and B differ, got {self.temperature}")
        if self.limit < 0 or self.batch_size < 1:
            raise ConfigError("--limit must be 0 (all) or more and --batch-size at least 1")
        self.sampling(0)  # the sampling flags are checked here, before any model is loaded

    def sampling(self, seed: int) -> SamplingConfig:
        """The engine's settings for one pair (two samples, seeds `seed` and `seed + 1`)."""
        return SamplingConfig(
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            n=2,
            seed=seed,
        )


@dataclass(frozen=True)
class SampledPair:
    """A pair and whether each answer ended by itself (end-of-turn) rather than at the token limit."""

    pair: NewPair
    finished_a: bool
    finished_b: bool


def sample_pairs(
    model: "Transformer",
    tokenizer: "Tokenizer",
    prompts: Sequence[Messages],
    config: PairConfig,
    *,
    model_id: str = "",
    progress: bool = True,
) -> tuple[list[SampledPair], Counter[str]]:
    """Sample `config.pairs_per_prompt` pairs for each prompt; returns the pairs and counts of what was
    skipped ("too_long" prompts, "identical" pairs)."""
    prompts = prompts[: config.limit] if config.limit else prompts
    context = model.config.context_length
    budget = context - min(config.max_new_tokens, context // 2)
    skipped: Counter[str] = Counter()
    jobs: list[tuple[Messages, list[int]]] = []
    for prompt in prompts:
        try:
            ids, _ = render(tokenizer, fit_messages(tokenizer, prompt, budget), add_generation_prompt=True)
        except ForgeError:
            skipped["too_long"] += 1
            continue
        jobs += [(prompt, ids)] * config.pairs_per_prompt
    eos_ids = (tokenizer.eos_id, tokenizer.end_of_turn_id)
    token_bytes = tokenizer.token_bytes()
    pairs: list[SampledPair] = []
    bar = tqdm(total=len(jobs), unit="pair", desc="sampling pairs", disable=not progress)
    for start in range(0, len(jobs), config.batch_size):
        batch = jobs[start : start + config.batch_size]
        configs = [config.sampling(config.seed + 2 * (start + i)) for i in range(len(batch))]
        completions = generate_batch(
            model, [ids for _, ids in batch], configs, eos_ids=eos_ids, token_bytes=token_bytes
        )
        for (prompt, _), a, b in zip(batch, completions[0::2], completions[1::2], strict=True):
            if a.text == b.text:
                skipped["identical"] += 1
                continue
            sampling = {
                "temperature": config.temperature,
                "top_p": config.top_p,
                "max_new_tokens": config.max_new_tokens,
                "seed_a": a.seed,
                "seed_b": b.seed,
                "finish_a": a.finish_reason,
                "finish_b": b.finish_reason,
            }
            pair = NewPair(
                prompt=prompt, answer_a=a.text, answer_b=b.text, sampling=sampling, model_id=model_id
            )
            pairs.append(SampledPair(pair, a.finish_reason == "stop", b.finish_reason == "stop"))
        bar.update(len(batch))
    bar.close()
    return pairs, skipped


def report_path(out: str | Path) -> Path:
    """Where the report of `out` goes: prefs.jsonl → prefs.report.json."""
    out = Path(out)
    return out.with_name(f"{out.name.removesuffix('.jsonl')}.report.json")


def _comparisons(
    pairs: Sequence[SampledPair], every_pair: bool
) -> Iterator[tuple[Messages, dict[str, bool], list[tuple[str, str]]]]:
    """For each prompt (in order of first appearance): its prompt, its distinct answer texts (each with
    whether it ended by itself; a text sampled twice is judged once) and the pairs of texts to compare:
    the sampled pairs, or with `every_pair` every two of its answers."""
    by_prompt: dict[str, tuple[Messages, dict[str, bool], list[tuple[str, str]]]] = {}
    for sampled in pairs:
        p = sampled.pair
        prompt, answers, compared = by_prompt.setdefault(prompt_key(p.prompt), (p.prompt, {}, []))
        answers.setdefault(p.answer_a, sampled.finished_a)
        answers.setdefault(p.answer_b, sampled.finished_b)
        if p.answer_a != p.answer_b:  # the same text on both sides is no preference
            compared.append((p.answer_a, p.answer_b))
    for prompt, answers, compared in by_prompt.values():
        yield prompt, answers, list(itertools.combinations(answers, 2)) if every_pair else compared


def synthesize(
    pairs: Sequence[SampledPair],
    out: str | Path,
    *,
    prompts: int,
    skipped: Counter[str] | None = None,
    config: PairConfig | None = None,
    every_pair: bool = False,
    renamed: bool = False,
) -> dict[str, Any]:
    """Judge the answers with the rule; write the pairs it separates to `out` as preference JSONL and a
    report next to it (`report_path`); returns the report. The sampled pairs are compared as they came,
    or with `every_pair` every two distinct answers of a prompt (k answers give k(k-1)/2 comparisons, as
    InstructGPT used its labellers' rankings of 4 to 9 answers: Ouyang et al. 2022, section 3.5). With
    `renamed`, each answer that passes is also written against its copy with the asked name replaced by a
    near miss, when the rule fails that copy (`"origin": "renamed"`; `forge.align.contrast`)."""
    kept, ties, compared_count, contrasts = 0, 0, 0, 0
    parts = sorted(  # what near misses borrow from: the parts of every asked name
        {
            part
            for s in pairs
            if renamed and (asked := asked_name(s.pair.prompt))
            for part in name_parts(asked[0])
        }
    )
    answers: Counter[str] = Counter()
    passing: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for prompt, texts, compared in _comparisons(pairs, every_pair):
            verdicts = {text: judge(prompt, text, finished=finished) for text, finished in texts.items()}
            for verdict in verdicts.values():
                answers[verdict.kind] += 1
                passing[verdict.kind] += verdict.passes
                failures.update(verdict.failed)
            for a, b in compared:
                compared_count += 1
                better = compare(verdicts[a], verdicts[b])
                if better is None:
                    ties += 1
                    continue
                chosen, rejected = (a, b) if better == "a" else (b, a)
                record = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                kept += 1
            for text, verdict in verdicts.items() if renamed else ():
                copy = renamed_answer(prompt, text, parts) if verdict.passes else None
                if copy is not None and compare(verdict, judge(prompt, copy, finished=texts[text])) == "a":
                    record = {"prompt": prompt, "chosen": text, "rejected": copy, "origin": "renamed"}
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
                    contrasts += 1
    total = sum(answers.values())
    report = {
        "note": "synthetic preferences: a readable rule (forge.align.rule) stands in for human judgements",
        "prompts": prompts,
        "pairing": "every pair of a prompt's answers" if every_pair else "the sampled pairs",
        "pairs_sampled": len(pairs),
        "pairs_compared": compared_count,
        "pairs_kept": kept,
        "renamed_pairs": contrasts,
        "ties_skipped": ties,
        "skipped": dict(skipped or {}),
        "answers": total,
        "pass_rate": passing.total() / total if total else 0.0,
        "pass_rate_by_kind": {kind: passing[kind] / n for kind, n in sorted(answers.items())},
        "failed_checks": dict(failures.most_common()),
        "config": to_dict(config) if config is not None else None,
        "out": str(out),
    }
    write_json(report_path(out), report)
    return report
