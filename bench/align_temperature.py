r"""Sampling temperature on the held-out instructions: how far the judge and the rule move when a policy's
answers are sampled cooler, with no training, to tell what DPO and PPO learnt from what sharper sampling
gives any policy.

`bench/align.py` samples every policy, the SFT policy included, at temperature 0.7. Here each policy (the
SFT policy first, then every run or `checkpoints/step-N` directory given) answers the `--eval-prompts`
held-out instructions of that split at each of `--temperatures` (0 is greedy), with seed = the
instruction's index, and is judged twice, by the judge (RM-B, never optimised against) and by the rule:

- `against_sft_0.7`: against the SFT policy's answers at 0.7, the comparison `bench/align.py` reports;
- `against_sft_same`: against the SFT policy's answers at the same temperature, so that a trained
  policy's gain is measured like for like (left out for the SFT policy, which would meet itself).

`kl_to_sft_0.7` is the KL from the distribution the answers are drawn from to the SFT policy's at 0.7,
summed exactly over the vocabulary at each answer position and over the answer, averaged over answers:
Σ_t KL(softmax(z_t / T) ‖ softmax(z_sft,t / 0.7)), the one-hot of the chosen token for T = 0. It is how
far the sampling moved from the baseline's, which the KL column of the other records (log-ratios of the
models themselves, at temperature 1) does not say for a change of temperature.

With `--select-prompts N` the judge also chooses each trained policy's temperature before any held-out
answer is sampled: on the N selection instructions after the held-out ones (those on which
`bench/align.py` chooses checkpoints), the policy at each temperature is judged against the SFT policy at
the same temperature, and the temperature it wins most often at is chosen (the higher one on a tie, the
lesser sharpening). `chosen` gives, per policy, that temperature, the selection table, and the held-out
numbers at it, like for like: the judge's win rate, the rule's pass rate beside the SFT policy's at that
temperature, and the rule's head-to-head verdict.

    python bench/align_temperature.py --sft demo_out/runs/long_sft_long --data demo_out/sft \
        --out demo_out/bench_align --temperatures 0,0.3,0.5,0.7 \
        demo_out/runs/ppo_rank_k8/checkpoints/step-0002112

Results go to bench/results/align_temperature.json, or `--results`. align_temperature_chosen.json came
from the checkpoints bench/align.py chose in the run behind bench/results/align.json:

    python bench/align_temperature.py --sft demo_out/runs/long_sft_long --data demo_out/sft \
        --out demo_out/bench_align --temperatures 0,0.3,0.5,0.7 --select-prompts 200 \
        --results bench/results/align_temperature_chosen.json \
        demo_out/bench_align/dpo_rule/checkpoints/step-0000360 \
        demo_out/bench_align/ppo/checkpoints/step-0001584
"""

import json
import time
from pathlib import Path
from typing import Any

import torch

from align import JUDGED_TEMPERATURE, Judged, answer, load_policy, parser_with_runs, validation_split
from forge.align.reward import RewardModel, load_reward_model
from forge.io import write_text
from forge.model.io import load_model
from forge.model.transformer import Transformer
from forge.runtime import available_cores, set_threads
from forge.tokenizer.bpe import Tokenizer
from forge.tokenizer.chat import render

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "align_temperature.json"


@torch.no_grad()
def sampling_kl(
    policy: Transformer, temperature: float, sft: Transformer, tokenizer: Tokenizer, prompts: list,
    answers: list,
) -> float:  # fmt: skip
    """Mean over answers of Σ_t KL(policy at `temperature` ‖ SFT policy at 0.7) at the answer's positions;
    at temperature 0 the policy's distribution is the one-hot of the token it chose."""
    total = 0.0
    for prompt, (_, _, answer_ids) in zip(prompts, answers, strict=True):
        context = render(tokenizer, prompt, add_generation_prompt=True)[0]
        ids = torch.tensor([context + answer_ids])
        start = len(context) - 1
        log_q = torch.log_softmax(sft(ids[:, :-1])[0, start:].float() / JUDGED_TEMPERATURE, dim=-1)
        if temperature == 0:
            chosen = ids[0, start + 1 :]
            total += float(-log_q.gather(1, chosen[:, None]).sum())
        else:
            log_p = torch.log_softmax(policy(ids[:, :-1])[0, start:].float() / temperature, dim=-1)
            total += float((log_p.exp() * (log_p - log_q)).sum())
    return total / max(len(prompts), 1)


def choose_temperatures(
    sft: Transformer, trained: dict[str, Transformer], prompts: list, temperatures: list[float],
    judge_model: RewardModel, tokenizer: Tokenizer, max_new_tokens: int,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per trained policy, the temperature at which the judge prefers its answers to the SFT policy's at
    the same temperature most often on `prompts` (the higher one on a tie), with every temperature's
    numbers there; nothing without prompts."""
    if not prompts:
        return {}
    baselines = {t: Judged(prompts, sft, judge_model, tokenizer, max_new_tokens, temperature=t)
                 for t in temperatures}  # fmt: skip
    chosen: dict[str, dict[str, Any]] = {}
    for name, policy in trained.items():
        table = {}
        for t in temperatures:
            answers = answer(policy, tokenizer, prompts, max_new_tokens, temperature=t)
            metrics = baselines[t].measure_answers(answers)
            table[str(t)] = {k: v for k, v in metrics.items() if k != "failed_checks"}
            print(f"selection, {name} at {t} like for like: {json.dumps(table[str(t)])}", flush=True)
        best = max(temperatures, key=lambda t: (table[str(t)]["win_rate"], t))
        chosen[name] = {"temperature": best, "selection": table}
        print(f"selection: {name} is judged at temperature {best}", flush=True)
    return chosen


def main() -> None:
    parser = parser_with_runs(__doc__)
    parser.add_argument("policies", nargs="*", help="run directories or checkpoints/step-N directories")
    parser.add_argument("--temperatures", default="0,0.3,0.5,0.7", help="comma-separated; 0 is greedy")
    parser.add_argument("--eval-prompts", type=int, default=200, help="held-out instructions to judge")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="answer length limit")
    parser.add_argument(
        "--select-prompts", type=int, default=0,
        help="instructions after the held-out ones on which the judge chooses each policy's temperature, "
        "like for like (0: no choice)",
    )  # fmt: skip
    parser.add_argument("--results", default=str(RESULTS), help="where the record goes")
    args = parser.parse_args()
    try:
        temperatures = [float(t) for t in args.temperatures.split(",")]
    except ValueError:
        raise SystemExit(f"--temperatures {args.temperatures!r}: give numbers separated by commas, e.g. "
                         f"0,0.3,0.7") from None  # fmt: skip
    if any(t < 0 for t in temperatures):
        raise SystemExit(f"--temperatures {args.temperatures!r}: a temperature is 0 (greedy) or more")
    sft_run, out = Path(args.sft), Path(args.out)
    paths = [Path(p) for p in args.policies]
    needed = [sft_run, out / "rm_B", *paths]
    if missing := [str(p) for p in needed if not (p / "model.safetensors").is_file()]:
        raise SystemExit(f"no model.safetensors in {', '.join(missing)}: give run or checkpoint directories "
                         f"and a finished bench/align.py --out")  # fmt: skip
    threads = set_threads(available_cores())
    start = time.perf_counter()
    held_out, selection = validation_split(Path(args.data), args.eval_prompts, args.select_prompts)
    sft, judge_model = load_model(sft_run), load_reward_model(out / "rm_B")
    tokenizer = Tokenizer.load(sft_run / "tokenizer")
    policies = {"sft": sft} | {str(p): load_policy(p, sft_run) for p in paths}
    trained = {name: policy for name, policy in policies.items() if policy is not sft}
    chosen = choose_temperatures(
        sft, trained, selection, temperatures, judge_model, tokenizer, args.max_new_tokens
    )
    baselines = {t: Judged(held_out, sft, judge_model, tokenizer, args.max_new_tokens, temperature=t)
                 for t in sorted({*temperatures, JUDGED_TEMPERATURE})}  # fmt: skip
    results: dict[str, dict[str, Any]] = {}
    for name, policy in policies.items():
        results[name] = {}
        for t in temperatures:
            answers = (  # the SFT policy's answers at t are its baseline's, same seeds
                baselines[t].sft_answers if policy is sft
                else answer(policy, tokenizer, held_out, args.max_new_tokens, temperature=t)
            )  # fmt: skip
            row: dict[str, Any] = {
                "kl_to_sft_0.7": round(sampling_kl(policy, t, sft, tokenizer, held_out, answers), 4),
                "against_sft_0.7": baselines[JUDGED_TEMPERATURE].measure_answers(answers),
            }
            if policy is not sft:
                row["against_sft_same"] = baselines[t].measure_answers(answers)
            results[name][str(t)] = row
            brief = {k: row["against_sft_0.7"][k] for k in ("win_rate", "rule_pass_rate", "rule_win_rate")}
            same = row.get("against_sft_same", {}).get("win_rate")
            print(f"{name} at {t}: {json.dumps(brief)}, KL {row['kl_to_sft_0.7']}, like for like {same}",
                  flush=True)  # fmt: skip
    for name, choice in chosen.items():
        t = choice["temperature"]
        choice["held_out"] = held = results[name][str(t)]["against_sft_same"]
        choice["rule_pass_rate_sft"] = sft_pass = baselines[t].sft_metrics()["rule_pass_rate"]
        print(f"{name}, chosen temperature {t}: judge {held['win_rate']} like for like, "
              f"rule pass rate {held['rule_pass_rate']} (SFT {sft_pass}), rule head-to-head "
              f"{held['rule_win_rate']}", flush=True)  # fmt: skip
    record = {
        "note": "policies sampled at other temperatures, judged as bench/align.py judges a policy",
        "chosen": chosen,
        "by_policy": results,
        "sft_at_temperature": {str(t): judged.sft_metrics() for t, judged in baselines.items()},
        "args": vars(args),
        "seconds": round(time.perf_counter() - start, 1),
        "threads": threads,
    }
    write_text(Path(args.results), json.dumps(record, indent=2) + "\n")
    print(f"→ {args.results}")


if __name__ == "__main__":
    main()
