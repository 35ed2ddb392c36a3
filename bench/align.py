r"""Alignment on the synthetic standard-library preferences: reward model, DPO and PPO, judged on held-out
prompts, in one run.

1. Pairs: two answers sampled from the SFT policy (temperature 1) for each of `--prompts` instructions
   of the synth-sft training set, judged by the readable rule of `forge.align.rule` (valid Python that
   defines the asked name, ends, does not repeat itself), which stands in for people. Pairs the rule
   cannot separate are skipped. With `--every-pair`, every two answers of an instruction are compared
   (K pairs per prompt: K(2K-1) comparisons instead of K). With `--renamed`, each answer the rule passes
   is also paired against its copy with the asked name replaced by a near miss (`forge.align.contrast`);
   these contrast pairs only ever train, and every accuracy is measured on sampled pairs. The sampled
   answers are kept in `--out`/sampled.jsonl: `--reuse-pairs` judges them again instead of sampling.
2. The pairs are split in two halves by prompt: A trains the reward model that DPO data and PPO optimise
   against (RM-A, its accuracy measured on B), B trains a second reward model, the judge (RM-B, its
   accuracy measured on A), never optimised against. RM-A's accuracy is also given per kind of pair, by
   the checks of the rule that separate it (`reward_model_accuracy_by_difference`).
3. DPO from the SFT policy on A (with its contrast pairs; reference: the SFT policy); PPO from the SFT
   policy with RM-A on A's prompts, KL penalty to the SFT policy.
4. Held-out: `--eval-prompts` instructions of the synth-sft validation set (modules never seen). Each
   policy answers each with the same seed (temperature 0.7); the judge scores every answer; a policy
   wins a prompt when the judge scores its answer above the SFT policy's (a tie counts half). The rule,
   the ground truth the pairs came from, gives each policy's pass rate, its mean score (the fraction of
   checks that hold) and its own head-to-head verdict against the SFT policy's answer to the same prompt
   (`rule_win_rate_*`: preferred 1, cannot tell 0.5, the SFT answer preferred 0). KL to the SFT policy
   is the mean over answers of the summed log-ratio of the policy's own sampled tokens (the k1 estimate).

With `--likelihood` both reward models add the answer's gated log-likelihood under their own LM head
(`forge reward train --likelihood`); PPO then credits those per-token terms on their tokens.

PPO runs with β `--ppo-kl-coef`, `--ppo-rollout-batch` prompts per rollout and answers sampled at
`--ppo-temperature`; with `--ppo-samples-per-prompt K` each prompt is answered K times and each answer is
paid against the others (`--ppo-group-reward`: loo, its score less their mean; rank, its rank among them).

With `--dpo-pairs rule,reward` a second DPO run trains on reward-ranked pairs: for each instruction of
half A, the answer RM-A scores highest among those sampled for it against the one it scores lowest (as
Dong et al. 2024, "RLHF Workflow", and Llama 3 build DPO data), the rule-tied pairs included.
With `--select-prompts N --checkpoints K`, each DPO and PPO run keeps K evenly spaced checkpoints, and
the judge chooses, on N further validation instructions after the `--eval-prompts` ones, the DPO run and
checkpoint and the PPO checkpoint whose answers it prefers to the SFT policy's most often: early
stopping on prompts the reported numbers are not measured on. `held_out_by_candidate` still gives every
candidate's held-out numbers.

    python bench/align.py [--sft demo_out/runs/sft] [--data demo_out/sft] [--prompts 600]

bench/results/align.json was made on the demo's data (`make demo`) by the three commands below, the
demo's pretraining and fine-tuning (bench/demo.py) pretrained for 36 minutes instead of 12 and fine-tuned
further, run a third time for a fresh model, and by the bench's command after them. Then
bench/align_temperature.py --select-prompts judged each chosen policy at the temperature the judge chose
for it (bench/results/align_temperature_chosen.json; its command is in that script's docstring), and
bench/align_online.py ran ten rounds of online DPO on the same model; bench/align_fold.py then made the
round the judge chose the record's DPO, the offline run's numbers kept as `dpo_offline_*` (the protocol,
fixed before the rounds ran, and both commands are in those two scripts' docstrings):

    forge pretrain --preset small --data demo_out/tokens --tokenizer demo_out/tokenizer \
        --out demo_out/runs/long --max-minutes 36 --max-steps 100000 --model.context-length 256 \
        --model.num-layers 6 --batch-size 8 --lr 3e-3 --warmup-steps 50 --eval-every 500 \
        --eval-batches 8 --checkpoint-every 250 --sample-every 500
    forge sft demo_out/runs/long --data demo_out/sft/train.jsonl --out demo_out/runs/long_sft \
        --lr 1e-3 --max-minutes 4 --max-steps 100000 --batch-size 8 --eval-every 200 \
        --eval-batches 8 --checkpoint-every 200
    forge sft demo_out/runs/long_sft --data demo_out/sft/train.jsonl --out demo_out/runs/long_sft_long \
        --lr 1e-3 --max-steps 1100 --batch-size 8
    python bench/align.py --sft demo_out/runs/long_sft_long --out demo_out/bench_align \
        --prompts 3000 --pairs-per-prompt 2 --eval-prompts 200 --select-prompts 200 --checkpoints 4 \
        --reward-steps 320 --likelihood --dpo-pairs rule --dpo-steps 480 --ppo-steps 2112 \
        --ppo-kl-coef 0.03 --ppo-rollout-batch 8 --ppo-samples-per-prompt 8 --ppo-group-reward rank

bench/results/align_first.json, the first model's run (written as align.json), was made by the same three
commands and

    python bench/align.py --sft demo_out/runs/long_sft_long --out demo_out/bench_align \
        --prompts 3000 --pairs-per-prompt 2 --eval-prompts 200 --select-prompts 200 --checkpoints 4 \
        --reward-steps 320 --likelihood --dpo-pairs rule,reward --dpo-steps 480 --ppo-steps 384

bench/results/align_rank.json came from a model rebuilt by the same three commands (2,612 steps in its 36
minutes) and a run whose PPO pays ranks; it was written in align.json's place and moved:

    python bench/align.py --sft demo_out/runs/long_sft_long --out demo_out/bench_align \
        --prompts 3000 --pairs-per-prompt 2 --eval-prompts 200 --select-prompts 200 --checkpoints 4 \
        --reward-steps 320 --likelihood --dpo-pairs rule,reward --dpo-steps 480 --ppo-steps 768 \
        --ppo-kl-coef 0.03 --ppo-rollout-batch 16 --ppo-samples-per-prompt 4 --ppo-group-reward rank

bench/results/align_likelihood.json and align_last_token.json came from an earlier model made by the same
three commands (its 36 minutes reached a held-out loss of 2.88; align_first.json's model, 2,755 steps at a
throughput that fell from 4,400 to 2,200 tokens/s during the run, 3.11) and the bench before
--select-prompts:

    python bench/align.py --sft demo_out/runs/long_sft_long --out demo_out/bench_align_long \
        --prompts 3000 --pairs-per-prompt 2 --eval-prompts 200 --reward-steps 320 --dpo-steps 240
    python bench/align.py --sft demo_out/runs/long_sft_long --out demo_out/bench_align_lik --reuse-pairs \
        --prompts 3000 --pairs-per-prompt 2 --eval-prompts 200 --reward-steps 320 --dpo-steps 480 \
        --ppo-steps 192 --likelihood

The first (last-token reward models) is align_last_token.json; align_likelihood.json is the second, which
judged the first run's sampled answers again (its sampled.jsonl copied into demo_out/bench_align_lik),
so both have the same 2,351 pairs.

bench/results/align_12min.json was made the same way on the demo's own 12-minute pretraining run:

    forge sft demo_out/runs/sft --data demo_out/sft/train.jsonl --out demo_out/runs/sft_long \
        --lr 1e-3 --max-steps 1100 --batch-size 8
    python bench/align.py --sft demo_out/runs/sft_long --prompts 3000 --pairs-per-prompt 2 \
        --eval-prompts 200 --reward-steps 320 --dpo-steps 240

On that model `--every-pair` kept 3.0x as many pairs and gave reward models of 0.720 and 0.726
held-out accuracy instead of 0.71 (README, "Alignment on the standard-library instructions").
bench/results/align_renamed.json came from another 12-minute model and SFT run of the same commands,
its pairs sampled as above (same --prompts and --pairs-per-prompt) and judged again with

    python bench/align.py --sft demo_out/runs/sft_long --reuse-pairs --renamed --prompts 3000 \
        --pairs-per-prompt 2 --eval-prompts 200 --reward-steps 960 --dpo-steps 480
"""

import argparse
import hashlib
import json
import shutil
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from forge.align.dpo import DpoConfig, dpo
from forge.align.formats import prompt_key, read_prompts
from forge.align.losses import token_logprobs
from forge.align.ppo import GROUP_REWARDS, PpoConfig, ppo
from forge.align.preferences import NewPair
from forge.align.reward import (
    RewardConfig,
    RewardModel,
    load_reward_model,
    score_answers,
    train_reward_model,
)
from forge.align.rule import compare, judge, task_of
from forge.align.sample_pairs import PairConfig, SampledPair, sample_pairs, synthesize
from forge.infer.batch import generate_batch
from forge.infer.sampling import SamplingConfig
from forge.io import write_text
from forge.model.io import load_config, load_model
from forge.model.transformer import Transformer
from forge.runtime import available_cores, set_threads
from forge.tokenizer.bpe import Tokenizer
from forge.tokenizer.chat import render
from forge.train.checkpoint import list_checkpoints

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "align.json"


def _half(prompt: Any) -> str:
    digest = hashlib.blake2b(json.dumps(prompt, sort_keys=True).encode(), digest_size=8).digest()
    return "A" if digest[0] % 2 == 0 else "B"


def split_pairs(path: Path, out: Path) -> dict[str, Path]:
    """Write the pairs of `path` into halves by a hash of the prompt: A.jsonl and B.jsonl hold the sampled
    pairs (what a reward model is measured on), A_train.jsonl and B_train.jsonl those and the half's
    renamed contrast pairs (what trains)."""
    halves: dict[str, list[str]] = {"A": [], "B": [], "A_train": [], "B_train": []}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            half = _half(record["prompt"])
            halves[f"{half}_train"].append(line)
            if record.get("origin") != "renamed":
                halves[half].append(line)
    paths = {}
    for name, lines in halves.items():
        paths[name] = out / f"{name}.jsonl"
        paths[name].write_text("\n".join(lines) + "\n")
    return paths


def write_sampled(path: Path, pairs: list[SampledPair], skipped: Counter[str]) -> None:
    """Keep the sampled pairs, so a later run can judge them again (--reuse-pairs)."""
    lines = [json.dumps({"skipped": dict(skipped)})] + [
        json.dumps(
            {
                "prompt": s.pair.prompt,
                "a": s.pair.answer_a,
                "b": s.pair.answer_b,
                "finished_a": s.finished_a,
                "finished_b": s.finished_b,
            },
            ensure_ascii=False,
        )
        for s in pairs
    ]
    path.write_text("\n".join(lines) + "\n")


def read_sampled(path: Path) -> tuple[list[SampledPair], Counter[str]]:
    """The pairs `write_sampled` kept, and what sampling skipped."""
    head, *records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    pairs = [
        SampledPair(
            NewPair(prompt=r["prompt"], answer_a=r["a"], answer_b=r["b"]), r["finished_a"], r["finished_b"]
        )
        for r in records
    ]
    return pairs, Counter(head["skipped"])


JUDGED_TEMPERATURE = 0.7  # every judged policy, and the SFT policy it is judged against, samples at it


@torch.no_grad()
def answer(
    model: Transformer,
    tokenizer: Tokenizer,
    prompts: list,
    max_new_tokens: int,
    seed_offset: int = 0,
    temperature: float = JUDGED_TEMPERATURE,
) -> list[tuple[str, bool, list[int]]]:
    """(text, ended, answer ids) per prompt, sampled at `temperature` (0 is greedy) with seed =
    `seed_offset` + the prompt's index."""
    ids = [render(tokenizer, p, add_generation_prompt=True)[0] for p in prompts]
    configs = [
        SamplingConfig(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed_offset + i)
        for i in range(len(ids))
    ]
    out = []
    for start in range(0, len(ids), 16):
        done = generate_batch(
            model,
            ids[start : start + 16],
            configs[start : start + 16],
            eos_ids=(tokenizer.end_of_turn_id,),
            token_bytes=tokenizer.token_bytes(),
        )
        out += [(c.text, c.finish_reason == "stop", c.token_ids) for c in done]
    return out


@torch.no_grad()
def kl_to(
    policy: Transformer, reference: Transformer, tokenizer: Tokenizer, prompts: list, answers: list
) -> float:
    """Mean over answers of Σ_t log π(a_t) − log π_ref(a_t) on the policy's own samples (k1)."""
    total = 0.0
    for prompt, (_, _, answer_ids) in zip(prompts, answers, strict=True):
        context = render(tokenizer, prompt, add_generation_prompt=True)[0]
        ids = torch.tensor([context + answer_ids])
        targets = ids[:, 1:]
        start = len(context) - 1
        lp = token_logprobs(policy(ids[:, :-1]), targets)[0, start:]
        lr = token_logprobs(reference(ids[:, :-1]), targets)[0, start:]
        total += float((lp - lr).sum())
    return total / max(len(prompts), 1)


def instructions(path: Path) -> list:
    """The prompts of a synth-sft split that the rule has a check for (write or explain a function)."""
    return [p for p in read_prompts(path) if task_of(p)[0] != "other"]


def validation_split(data: Path, eval_prompts: int, select_prompts: int) -> tuple[list, list]:
    """The held-out instructions of the synth-sft validation set (the first `eval_prompts`) and the
    selection ones after them (`select_prompts`)."""
    validation = instructions(data / "val.jsonl")
    if len(validation) < eval_prompts + select_prompts:
        raise SystemExit(
            f"{data / 'val.jsonl'} has {len(validation)} instructions the rule checks, fewer than "
            f"--eval-prompts {eval_prompts} + --select-prompts {select_prompts}"
        )
    return validation[:eval_prompts], validation[eval_prompts : eval_prompts + select_prompts]


def accuracy_by_difference(model: RewardModel, tokenizer: Tokenizer, pairs_path: Path) -> dict[str, dict]:
    """The reward model's held-out accuracy on the pairs of `pairs_path`, grouped by the checks of the rule
    that the rejected answer fails and the chosen one passes: what the model learned to see and what not.
    A pair file does not keep whether each answer ended by itself, so pairs that differ in no other check
    are the rule's "finished" ones (one answer stopped at the token limit)."""
    pairs = [json.loads(line) for line in pairs_path.read_text().splitlines() if line.strip()]
    items = [(p["prompt"], answer) for p in pairs for answer in (p["chosen"], p["rejected"])]
    scores = score_answers(model, tokenizer, items)
    groups: dict[str, list[bool]] = {}
    for i, p in enumerate(pairs):
        chosen, rejected = judge(p["prompt"], p["chosen"]), judge(p["prompt"], p["rejected"])
        difference = "+".join(sorted(set(rejected.failed) - set(chosen.failed))) or "finished"
        groups.setdefault(difference, []).append(scores[2 * i] > scores[2 * i + 1])
    return {
        difference: {"accuracy": round(sum(right) / len(right), 4), "pairs": len(right)}
        for difference, right in sorted(groups.items(), key=lambda item: -len(item[1]))
    }


def win_rate(outcomes: Iterable[int]) -> float:
    """The share of comparisons won, a tie counting half: outcomes are 1 (won), 0 (tie), -1 (lost)."""
    results = list(outcomes)
    return sum((o + 1) / 2 for o in results) / len(results)


def reward_ranked_pairs(
    model: RewardModel,
    tokenizer: Tokenizer,
    pairs: list[SampledPair],
    half: str,
    path: Path,
    unfinished_penalty: float = 0.0,
) -> dict[str, int]:
    """Preference pairs ranked by a reward model instead of the rule: the distinct answers sampled for each
    prompt of `half`, scored by `model` less `unfinished_penalty` for an answer cut at the token limit, the
    best against the worst (the reward-ranked pairs of Dong et al. 2024, "RLHF Workflow", and Llama 3's
    preference data), written to `path`. Returns counts."""
    by_prompt: dict[str, tuple[Any, dict[str, bool]]] = {}
    for sampled in pairs:
        p = sampled.pair
        if _half(p.prompt) != half:
            continue
        _, answers = by_prompt.setdefault(prompt_key(p.prompt), (p.prompt, {}))
        answers.setdefault(p.answer_a, sampled.finished_a)
        answers.setdefault(p.answer_b, sampled.finished_b)
    items = [(prompt, a) for prompt, answers in by_prompt.values() for a in answers]
    scores = iter(score_answers(model, tokenizer, items))
    lines, ties = [], 0
    for prompt, answers in by_prompt.values():
        ranked = sorted(
            ((next(scores) - (0.0 if ended else unfinished_penalty), a) for a, ended in answers.items()),
            key=lambda x: -x[0],
        )
        (best, chosen), (worst, rejected) = ranked[0], ranked[-1]
        if best > worst:
            lines.append(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}))
        else:
            ties += 1
    path.write_text("\n".join(lines) + "\n")
    return {"prompts": len(by_prompt), "answers": len(items), "pairs": len(lines), "ties_skipped": ties}


def checkpoint_policy(checkpoint: Path, base: Path) -> Transformer:
    """The policy of a training checkpoint (`checkpoints/step-N/` of a DPO or PPO run started from `base`):
    its weights, without PPO's value head, in a model of `base`'s shape."""
    config = load_config(base)
    model = Transformer(config)
    weights = load_file(str(checkpoint / "model.safetensors"))
    missing, unexpected = model.load_state_dict(
        {k: v for k, v in weights.items() if not k.startswith("value_head.")}, strict=False
    )
    if unexpected or set(missing) != ({"lm_head.weight"} if config.tie_embeddings else set()):
        raise SystemExit(f"{checkpoint}: weights do not fit {base}'s model ({missing[:3]}, {unexpected[:3]})")
    return model.eval()


def load_policy(path: Path, base: Path) -> Transformer:
    """A run directory's model, or the policy of a `checkpoints/step-N` directory of a run from `base`."""
    return checkpoint_policy(path, base) if path.name.startswith("step-") else load_model(path)


def run_checkpoints(run_dir: Path, base: Path) -> dict[int, Transformer]:
    """Every checkpoint a run kept, by step."""
    return {
        int(path.name.removeprefix("step-")): checkpoint_policy(path, base)
        for path in list_checkpoints(run_dir)
    }


class Judged:
    """The policies' answers to a set of held-out prompts, judged against the SFT policy's by the judge
    (a reward model never optimised against) and by the rule."""

    def __init__(self, prompts: list, sft: Transformer, judge_model: RewardModel, tokenizer: Tokenizer,
                 max_new_tokens: int, temperature: float = JUDGED_TEMPERATURE) -> None:  # fmt: skip
        self.prompts, self.sft, self.judge_model, self.tokenizer = prompts, sft, judge_model, tokenizer
        self.max_new_tokens, self.temperature = max_new_tokens, temperature  # both sides sample at it
        self.sft_answers = answer(sft, tokenizer, prompts, max_new_tokens, temperature=temperature)
        self.sft_scores = self._scores(self.sft_answers)
        self.sft_verdicts = self._verdicts(self.sft_answers)

    def _scores(self, answers: list) -> list[float]:
        items = [(p, a[0]) for p, a in zip(self.prompts, answers, strict=True)]
        return score_answers(self.judge_model, self.tokenizer, items)

    def _verdicts(self, answers: list) -> list:
        return [judge(p, a[0], finished=a[1]) for p, a in zip(self.prompts, answers, strict=True)]

    def sft_metrics(self) -> dict[str, Any]:
        return self._rule(self.sft_verdicts)

    def _rule(self, verdicts: list) -> dict[str, Any]:
        n = len(self.prompts)
        return {
            "rule_pass_rate": round(sum(v.passes for v in verdicts) / n, 4),
            "rule_score": round(sum(v.score for v in verdicts) / n, 4),
            "failed_checks": dict(Counter(check for v in verdicts for check in v.failed).most_common()),
        }

    def measure(self, policy: Transformer) -> tuple[dict[str, Any], list]:
        """Win rate against the SFT policy by the judge, KL to it and the rule's verdicts; and the answers."""
        t = self.temperature
        answers = answer(policy, self.tokenizer, self.prompts, self.max_new_tokens, temperature=t)
        metrics = self.measure_answers(answers)
        kl = round(kl_to(policy, self.sft, self.tokenizer, self.prompts, answers), 4)
        return {"win_rate": metrics.pop("win_rate"), "kl": kl, **metrics}, answers

    def measure_answers(self, answers: list) -> dict[str, Any]:
        """Win rate against the SFT policy by the judge and the rule's verdicts, for one answer per prompt
        ((text, ended, ids) as `answer` gives them)."""
        scores, verdicts = self._scores(answers), self._verdicts(answers)
        wins = win_rate((s > b) - (s < b) for s, b in zip(scores, self.sft_scores, strict=True))
        rule_wins = win_rate(
            {"a": 1, "b": -1, None: 0}[compare(v, base)]
            for v, base in zip(verdicts, self.sft_verdicts, strict=True)
        )
        return {"win_rate": round(wins, 4), "rule_win_rate": round(rule_wins, 4), **self._rule(verdicts)}


def select(candidates: dict[str, Transformer], selection: Judged | None) -> tuple[str, list[dict[str, Any]]]:
    """The candidate whose answers the judge prefers most often on the selection prompts (the earliest on a
    tie), and every candidate's numbers there; without selection prompts, the last candidate."""
    names = list(candidates)
    if selection is None:
        return names[-1], []
    table = []
    for name in names:
        metrics, _ = selection.measure(candidates[name])
        table.append({"candidate": name, **{k: v for k, v in metrics.items() if k != "failed_checks"}})
        print(f"selection: {json.dumps(table[-1])}", flush=True)
    best = max(range(len(names)), key=lambda i: (table[i]["win_rate"], -i))
    return names[best], table


def parser_with_runs(
    doc: str | None, out_help: str = "a finished bench/align.py run's --out"
) -> argparse.ArgumentParser:
    """A parser showing `doc`, with the --sft, --data and --out options every alignment bench takes."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft", default=str(ROOT / "demo_out" / "runs" / "sft"), help="SFT policy run")
    parser.add_argument("--data", default=str(ROOT / "demo_out" / "sft"), help="synth-sft output directory")
    parser.add_argument("--out", default=str(ROOT / "demo_out" / "bench_align"), help=out_help)
    return parser


def main() -> None:
    parser = parser_with_runs(__doc__, out_help="where the runs go")
    parser.add_argument("--prompts", type=int, default=600, help="training instructions to sample pairs for")
    parser.add_argument("--pairs-per-prompt", type=int, default=1, help="pairs of answers sampled per prompt")
    parser.add_argument(
        "--every-pair",
        action="store_true",
        help="compare every two answers of a prompt, not only the sampled pairs (see forge label synth)",
    )
    parser.add_argument(
        "--reuse-pairs",
        action="store_true",
        help="judge the pairs an earlier run sampled (--out/sampled.jsonl) instead of sampling new ones "
        "(same --sft only)",
    )
    parser.add_argument(
        "--renamed",
        action="store_true",
        help="add contrast pairs to the training halves: each answer the rule passes against its copy with "
        "the asked name replaced by a near miss (forge label synth --renamed); held-out pairs stay as "
        "sampled",
    )
    parser.add_argument("--eval-prompts", type=int, default=100, help="held-out instructions to judge")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="answer length limit")
    parser.add_argument("--reward-steps", type=int, default=80, help="steps of each reward model")
    parser.add_argument(
        "--likelihood",
        action="store_true",
        help="both reward models add the answer's gated log-likelihood (forge reward train --likelihood)",
    )
    parser.add_argument(
        "--dpo-pairs",
        default="rule",
        help="comma-separated, each trains a DPO run: rule (the rule's pairs of half A, as the reward model "
        "learnt from) and reward (for each prompt of half A, its sampled answer RM-A scores highest against "
        "the one it scores lowest)",
    )
    parser.add_argument(
        "--select-prompts",
        type=int,
        default=0,
        help="held-out instructions, after the --eval-prompts ones, on which the judge chooses among the "
        "DPO runs and checkpoints and among the PPO checkpoints (0: the last DPO run's and PPO's final "
        "weights)",
    )
    parser.add_argument(
        "--checkpoints",
        type=int,
        default=1,
        help="evenly spaced checkpoints of each DPO and PPO run that --select-prompts chooses among",
    )
    parser.add_argument("--dpo-steps", type=int, default=80, help="DPO steps")
    parser.add_argument("--dpo-lr", type=float, default=2e-5, help="DPO learning rate")
    parser.add_argument("--ppo-steps", type=int, default=96, help="PPO minibatch updates")
    parser.add_argument("--ppo-kl-coef", type=float, default=0.05, help="PPO's β (forge ppo --kl-coef)")
    parser.add_argument("--ppo-rollout-batch", type=int, default=32, help="prompts per PPO rollout")
    parser.add_argument(
        "--ppo-samples-per-prompt", type=int, default=1, help="answers per prompt of a PPO rollout"
    )
    parser.add_argument(
        "--ppo-group-reward", choices=tuple(GROUP_REWARDS), default="loo",
        help="with --ppo-samples-per-prompt above 1: how an answer is paid against its prompt's others",
    )  # fmt: skip
    parser.add_argument(
        "--ppo-temperature", type=float, default=1.0,
        help="temperature PPO samples and computes its log-probabilities at (forge ppo --temperature)",
    )  # fmt: skip
    args = parser.parse_args()
    args.dpo_pairs = [v.strip() for v in args.dpo_pairs.split(",") if v.strip()]
    if not args.dpo_pairs or set(args.dpo_pairs) - {"rule", "reward"}:
        parser.error(f"--dpo-pairs takes rule, reward or both (comma-separated), got {args.dpo_pairs}")
    if args.checkpoints < 1 or (args.checkpoints > 1 and not args.select_prompts):
        parser.error("--checkpoints must be at least 1, and above 1 only with --select-prompts")
    threads = set_threads(available_cores())
    sft_run, data, out = Path(args.sft), Path(args.data), Path(args.out)
    prefs, sampled_path = out / "prefs.jsonl", out / "sampled.jsonl"
    if args.reuse_pairs and not sampled_path.exists():
        raise SystemExit(
            f"--reuse-pairs: no earlier pairs in {sampled_path}; run once without --reuse-pairs to "
            "sample them"
        )
    out.mkdir(parents=True, exist_ok=True)
    for name in ("rm_A", "rm_B", "dpo", "dpo_rule", "dpo_reward", "ppo"):
        shutil.rmtree(out / name, ignore_errors=True)  # every run starts from the SFT policy again
    seconds: dict[str, float] = {}
    common = {"progress": False, "threads": threads, "eval_every": 0, "checkpoint_every": 0}

    start = time.perf_counter()
    policy, tokenizer = load_model(sft_run), Tokenizer.load(sft_run / "tokenizer")
    train_prompts = instructions(data / "train.jsonl")[: args.prompts]
    if args.reuse_pairs:
        pairs, skipped = read_sampled(sampled_path)
        print(f"pairs: judging the {len(pairs)} pairs sampled earlier in {sampled_path}", flush=True)
    else:
        pairs, skipped = sample_pairs(
            policy,
            tokenizer,
            train_prompts,
            PairConfig(max_new_tokens=args.max_new_tokens, pairs_per_prompt=args.pairs_per_prompt),
            model_id="sft",
        )
        write_sampled(sampled_path, pairs, skipped)
    pair_report = synthesize(
        pairs,
        prefs,
        prompts=len(train_prompts),
        skipped=skipped,
        every_pair=args.every_pair,
        renamed=args.renamed,
    )
    halves = split_pairs(prefs, out)
    seconds["pairs"] = time.perf_counter() - start
    print(f"pairs: {json.dumps(pair_report)[:400]}", flush=True)

    start = time.perf_counter()
    rm = {
        name: train_reward_model(
            RewardConfig(
                base=str(sft_run),
                data=str(halves[f"{name}_train"]),
                val_data=str(halves["B" if name == "A" else "A"]),
                out=str(out / f"rm_{name}"),
                max_steps=args.reward_steps,
                likelihood=args.likelihood,
                **common,
            )
        )
        for name in ("A", "B")
    }
    rm_a, judge_model = load_reward_model(out / "rm_A"), load_reward_model(out / "rm_B")
    by_difference = accuracy_by_difference(rm_a, tokenizer, halves["B"])
    print(f"reward model accuracy by what separates the pair: {json.dumps(by_difference)}", flush=True)
    seconds["reward_models"] = time.perf_counter() - start
    checkpoint_every = {  # 0: no checkpoints, the final weights are the only candidate
        name: steps // args.checkpoints if args.checkpoints > 1 else 0
        for name, steps in (("dpo", args.dpo_steps), ("ppo", args.ppo_steps))
    }
    start = time.perf_counter()
    dpo_data, dpo_summaries, reward_pairs_report = {"rule": halves["A_train"]}, {}, None
    if "reward" in args.dpo_pairs:
        dpo_data["reward"] = out / "A_reward.jsonl"
        reward_pairs_report = reward_ranked_pairs(rm_a, tokenizer, pairs, "A", dpo_data["reward"])
        print(f"reward-ranked pairs: {json.dumps(reward_pairs_report)}", flush=True)
    for variant in args.dpo_pairs:
        dpo_summaries[variant] = dpo(
            DpoConfig(
                policy=str(sft_run),
                data=str(dpo_data[variant]),
                val_data=str(halves["B"]),
                out=str(out / f"dpo_{variant}"),
                max_steps=args.dpo_steps,
                lr=args.dpo_lr,
                **common | {"checkpoint_every": checkpoint_every["dpo"], "keep_checkpoints": 0},
            )
        )
    seconds["dpo"] = time.perf_counter() - start
    prompts_a = out / "prompts_A.jsonl"
    prompts_a.write_text(
        "".join(
            json.dumps({"prompt": json.loads(line)["prompt"]}) + "\n"
            for line in halves["A"].read_text().splitlines()
            if line.strip()
        )
    )
    start = time.perf_counter()
    ppo_summary = ppo(
        PpoConfig(
            policy=str(sft_run),
            reward=str(out / "rm_A"),
            prompts=str(prompts_a),
            out=str(out / "ppo"),
            max_steps=args.ppo_steps,
            lr=3e-5,
            kl_coef=args.ppo_kl_coef,
            rollout_batch=args.ppo_rollout_batch,
            samples_per_prompt=args.ppo_samples_per_prompt,
            group_reward=args.ppo_group_reward,
            temperature=args.ppo_temperature,
            max_new_tokens=args.max_new_tokens,
            progress=False,
            threads=threads,
            checkpoint_every=checkpoint_every["ppo"],
            keep_checkpoints=0,
        )
    )
    seconds["ppo"] = time.perf_counter() - start

    start = time.perf_counter()
    held_out, selection_prompts = validation_split(data, args.eval_prompts, args.select_prompts)
    selection = (
        Judged(selection_prompts, policy, judge_model, tokenizer, args.max_new_tokens)
        if selection_prompts
        else None
    )
    candidates: dict[str, dict[str, Transformer]] = {"dpo": {}, "ppo": {}}
    for variant in args.dpo_pairs:
        run = out / f"dpo_{variant}"
        kept = run_checkpoints(run, sft_run) if args.checkpoints > 1 else {}
        kept[args.dpo_steps] = load_model(run)
        candidates["dpo"] |= {f"dpo_{variant}@{step}": model for step, model in sorted(kept.items())}
    kept = run_checkpoints(out / "ppo", sft_run) if args.checkpoints > 1 else {}
    kept[args.ppo_steps] = load_model(out / "ppo")
    candidates["ppo"] = {f"ppo@{step}": model for step, model in sorted(kept.items())}
    chosen, selection_table = {}, {}
    for name in ("dpo", "ppo"):
        chosen[name], selection_table[name] = select(candidates[name], selection)
    seconds["selection"] = time.perf_counter() - start

    start = time.perf_counter()
    held = Judged(held_out, policy, judge_model, tokenizer, args.max_new_tokens)
    measured = {
        candidate: held.measure(model) for group in candidates.values() for candidate, model in group.items()
    }
    final = {name: measured[chosen[name]][0] for name in ("dpo", "ppo")}
    sft_rule = held.sft_metrics()
    seconds["evaluation"] = time.perf_counter() - start

    summary = {
        "reward_model_accuracy": rm["A"]["val_accuracy_after"],
        "judge_accuracy": rm["B"]["val_accuracy_after"],
        "dpo_win_rate": final["dpo"]["win_rate"],
        "ppo_win_rate": final["ppo"]["win_rate"],
        "dpo_kl": final["dpo"]["kl"],
        "ppo_kl": final["ppo"]["kl"],
        "rule_pass_rate_sft": sft_rule["rule_pass_rate"],
        "rule_pass_rate_dpo": final["dpo"]["rule_pass_rate"],
        "rule_pass_rate_ppo": final["ppo"]["rule_pass_rate"],
        "rule_score_sft": sft_rule["rule_score"],
        "rule_score_dpo": final["dpo"]["rule_score"],
        "rule_score_ppo": final["ppo"]["rule_score"],
        "rule_win_rate_dpo": final["dpo"]["rule_win_rate"],
        "rule_win_rate_ppo": final["ppo"]["rule_win_rate"],
        "dpo_policy": chosen["dpo"],
        "ppo_policy": chosen["ppo"],
    }
    answers = {"sft": held.sft_answers, **{name: measured[chosen[name]][1] for name in ("dpo", "ppo")}}
    examples = [
        {"prompt": held_out[i][-1]["content"], **{n: answers[n][i][0] for n in answers}} for i in range(3)
    ]
    payload = {
        "summary": summary,
        "args": vars(args),
        "pairs": pair_report,
        "reward_models": rm,
        "reward_model_accuracy_by_difference": by_difference,
        "reward_ranked_pairs": reward_pairs_report,
        "dpo": dpo_summaries,
        "ppo": ppo_summary,
        "held_out_prompts": len(held_out),
        "selection_prompts": len(selection_prompts),
        "selection": selection_table,
        "held_out_by_candidate": {
            candidate: {k: v for k, v in metrics.items() if k != "failed_checks"}
            for candidate, (metrics, _) in measured.items()
        },
        "held_out_failed_checks": {
            "sft": sft_rule["failed_checks"],
            **{name: final[name]["failed_checks"] for name in ("dpo", "ppo")},
        },
        "examples": examples,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "threads": threads,
    }
    write_text(RESULTS, json.dumps(payload, indent=2, default=str) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
