r"""Iterative (online) DPO on top of a finished `bench/align.py` run: each round samples answers from the
current policy, ranks them with that run's reward model RM-A and trains DPO on the best against the worst.

Offline DPO learns from answers the SFT policy sampled; the policy soon answers differently, and the
pairs say less about what it now does. Online rounds (Xiong et al. 2024, "Iterative Preference Learning
from Human Feedback", and Dong et al. 2024, "RLHF Workflow") sample new answers each time:

1. the current policy (the SFT policy in round 1) answers every instruction of half A
   (`--out`/prompts_A.jsonl) `--pairs-per-prompt` times two, at temperature 1 and top-p 0.95, with the
   seeds of round r starting at 1000·r;
2. RM-A scores the distinct answers, an answer cut at the token limit losing `--unfinished-penalty` (as
   PPO's penalty for answers that never end); the best against the worst is a pair (none when all tie);
3. DPO trains the current policy on those pairs for `--steps-per-round` steps, the reference staying the
   SFT policy, so the KL that β holds back is the KL to where alignment started.

The judge (RM-B, never optimised against) then picks a round on the `--select-prompts` validation
instructions after the `--eval-prompts` ones, and every round is measured on the held-out ones, as
`bench/align.py` does. Results go to bench/results/align_online.json, which was made after the command
behind bench/align.json (see bench/align.py) with

    python bench/align_online.py --sft demo_out/runs/long_sft_long --data demo_out/sft \
        --out demo_out/bench_align --rounds 5 --steps-per-round 160
"""

import argparse
import json
import time
from pathlib import Path

from align import Judged, reward_ranked_pairs, select, validation_split
from forge.align.dpo import DpoConfig, dpo
from forge.align.formats import read_prompts
from forge.align.reward import load_reward_model
from forge.align.sample_pairs import PairConfig, sample_pairs
from forge.io import write_text
from forge.model.io import load_model
from forge.runtime import available_cores, set_threads
from forge.tokenizer.bpe import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "align_online.json"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sft", default=str(ROOT / "demo_out" / "runs" / "sft"), help="SFT policy run")
    parser.add_argument("--data", default=str(ROOT / "demo_out" / "sft"), help="synth-sft output directory")
    parser.add_argument(
        "--out", default=str(ROOT / "demo_out" / "bench_align"), help="a finished bench/align.py run's --out"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of sampling, ranking and DPO")
    parser.add_argument("--steps-per-round", type=int, default=160, help="DPO steps of each round")
    parser.add_argument("--pairs-per-prompt", type=int, default=2, help="pairs of answers sampled per prompt")
    parser.add_argument("--unfinished-penalty", type=float, default=1.0, help="score lost at the token limit")
    parser.add_argument("--dpo-lr", type=float, default=2e-5, help="DPO learning rate")
    parser.add_argument("--eval-prompts", type=int, default=200, help="held-out instructions to judge")
    parser.add_argument("--select-prompts", type=int, default=200, help="instructions the judge selects on")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="answer length limit")
    args = parser.parse_args()
    if args.rounds < 1 or args.steps_per_round < 1 or args.pairs_per_prompt < 1:
        parser.error("--rounds, --steps-per-round and --pairs-per-prompt must be at least 1")
    sft_run, data, out = Path(args.sft), Path(args.data), Path(args.out)
    needed = [out / "rm_A", out / "rm_B", out / "prompts_A.jsonl", out / "B.jsonl"]
    if missing := [str(p) for p in needed if not p.exists()]:
        raise SystemExit(f"{', '.join(missing)} not found: run bench/align.py --out {out} first")
    held_out, selection_prompts = validation_split(data, args.eval_prompts, args.select_prompts)
    threads = set_threads(available_cores())
    tokenizer = Tokenizer.load(sft_run / "tokenizer")
    prompts = read_prompts(out / "prompts_A.jsonl")
    rm_a = load_reward_model(out / "rm_A")
    online = out / "online"
    online.mkdir(exist_ok=True)
    current, rounds, seconds = sft_run, [], {"sampling": 0.0, "dpo": 0.0}
    for r in range(1, args.rounds + 1):
        start = time.perf_counter()
        config = PairConfig(
            max_new_tokens=args.max_new_tokens, pairs_per_prompt=args.pairs_per_prompt, seed=1000 * r
        )
        sampled, skipped = sample_pairs(load_model(current), tokenizer, prompts, config, progress=False)
        pairs_path = online / f"round{r}.jsonl"
        counts = reward_ranked_pairs(
            rm_a, tokenizer, sampled, "A", pairs_path, unfinished_penalty=args.unfinished_penalty
        )
        seconds["sampling"] += time.perf_counter() - start
        print(f"round {r}: {json.dumps(counts | {'skipped': dict(skipped)})}", flush=True)
        start = time.perf_counter()
        dpo_summary = dpo(
            DpoConfig(
                policy=str(current),
                reference=str(sft_run),
                data=str(pairs_path),
                val_data=str(out / "B.jsonl"),
                out=str(online / f"round{r}"),
                max_steps=args.steps_per_round,
                lr=args.dpo_lr,
                progress=False,
                threads=threads,
                eval_every=0,
                checkpoint_every=0,
            )
        )
        seconds["dpo"] += time.perf_counter() - start
        rounds.append({"round": r, "pairs": counts, "dpo": dpo_summary})
        current = online / f"round{r}"

    start = time.perf_counter()
    sft, judge_model = load_model(sft_run), load_reward_model(out / "rm_B")
    candidates = {f"online_dpo@round{r}": load_model(online / f"round{r}") for r in range(1, args.rounds + 1)}
    selection = Judged(selection_prompts, sft, judge_model, tokenizer, args.max_new_tokens)
    chosen, selection_table = select(candidates, selection)
    held = Judged(held_out, sft, judge_model, tokenizer, args.max_new_tokens)
    measured = {name: held.measure(model)[0] for name, model in candidates.items()}
    seconds["evaluation"] = time.perf_counter() - start
    final, sft_rule = measured[chosen], held.sft_metrics()
    summary = {
        "dpo_win_rate": final["win_rate"],
        "dpo_kl": final["kl"],
        "rule_pass_rate_sft": sft_rule["rule_pass_rate"],
        "rule_pass_rate_dpo": final["rule_pass_rate"],
        "rule_win_rate_dpo": final["rule_win_rate"],
        "dpo_policy": chosen,
    }
    payload = {
        "summary": summary,
        "args": vars(args),
        "rounds": rounds,
        "held_out_prompts": len(held_out),
        "selection_prompts": len(selection_prompts),
        "selection": selection_table,
        "held_out_by_candidate": measured,
        "held_out_failed_checks_sft": sft_rule["failed_checks"],
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "threads": threads,
    }
    write_text(RESULTS, json.dumps(payload, indent=2, default=str) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
