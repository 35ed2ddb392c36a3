r"""Best-of-N on the held-out instructions: how far the judge moves when the SFT policy's own answers are
chosen among, with no training, as a yardstick for what DPO and PPO reach.

The SFT policy answers each of the `--eval-prompts` held-out instructions of `bench/align.py`'s split N
times (temperature 0.7, as every judged policy; the k-th answer to instruction i has seed 1000·k + i, so
none is the SFT answer it is judged against, whose seed is i). A selector keeps one answer per
instruction, and that answer is judged as `bench/align.py` judges a policy's: by the judge (RM-B, never
optimised against) against the SFT policy's answer, and by the rule. Selectors:

- `reward`: the answer RM-A scores highest, less 1 for an answer cut at the token limit (PPO's
  `--no-eos-penalty`). This is best-of-N sampling against the reward model DPO's data and PPO optimise
  against (Nakano et al. 2021, "WebGPT", section 3.2; Gao et al. 2023, "Scaling Laws for Reward Model
  Overoptimization", section 2.2). Its KL to the SFT policy is at most log N − (N−1)/N nats (Beirami et
  al. 2024, "Theoretical guarantees on the best-of-n alignment policy", theorem 1), 1.85 for N = 16.
- `rule`: the answer the rule prefers (one that passes, else the most checks held; the first on a tie).
  It is what a policy that always found the ground truth's favourite among N answers of the SFT policy
  would be judged, an estimate of how much of the target the judge can give to a real gain.
- `first`: the first answer (N = 1 is the SFT policy sampled with other seeds): a check that the
  comparison is even (near 50%).

    python bench/align_bon.py --sft demo_out/runs/long_sft_long --data demo_out/sft \
        --out demo_out/bench_align --n 1,4,16

Results go to bench/results/align_bon.json. Choosing among answers at answer time is search on the very
instruction being judged; a trained policy has to carry what it learnt to instructions it never saw. With
`--distill FILE`, the SFT policy also answers each training instruction of half A (`--out`/prompts_A.jsonl)
`--distill-n` times the same way, and RM-A's best answer to each (none where it stops at the token limit)
becomes a conversation of FILE, for `forge sft` to train on: rejection-sampling fine-tuning (Touvron et
al. 2023, "Llama 2", section 3.2.3; Dong et al. 2023, "RAFT"), a policy made of best-of-N answers, which
`bench/align_judge.py` then judges as any other.
"""

import argparse
import json
import math
import time
from pathlib import Path

from align import Judged, answer, parser_with_runs, validation_split
from forge.align.formats import read_prompts
from forge.align.reward import RewardModel, load_reward_model, score_answers
from forge.align.rule import judge
from forge.io import write_text
from forge.model.io import load_model
from forge.model.transformer import Transformer
from forge.runtime import available_cores, set_threads
from forge.tokenizer.bpe import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "align_bon.json"
SEED_STRIDE = 1000  # the k-th answer to instruction i has seed SEED_STRIDE·k + i


def best(values: list) -> int:
    """The index of the largest value, the first on a tie."""
    return max(range(len(values)), key=lambda k: (values[k], -k))


def paid_scores(
    rm_a: RewardModel, tokenizer: Tokenizer, prompts: list, answers: list, penalty: float
) -> list:
    """RM-A's score of each (prompt, answer), less `penalty` where the answer stopped at the token limit."""
    scores = score_answers(rm_a, tokenizer, [(p, a[0]) for p, a in zip(prompts, answers, strict=True)])
    return [s - (0 if ended else penalty) for s, (_, ended, _) in zip(scores, answers, strict=True)]


def distill(args: argparse.Namespace, sft: Transformer, rm_a: RewardModel, tokenizer: Tokenizer) -> dict:
    """Write RM-A's best of `--distill-n` answers to each half-A instruction as conversations; say how
    many were written."""
    prompts = read_prompts(Path(args.out) / "prompts_A.jsonl")
    best_answers: list[tuple[float, str, bool]] = [(-math.inf, "", False)] * len(prompts)
    for k in range(1, args.distill_n + 1):
        answers = answer(sft, tokenizer, prompts, args.max_new_tokens, seed_offset=SEED_STRIDE * k)
        paid_all = paid_scores(rm_a, tokenizer, prompts, answers, args.unfinished_penalty)
        for i, ((text, ended, _), paid) in enumerate(zip(answers, paid_all, strict=True)):
            if paid > best_answers[i][0]:
                best_answers[i] = (paid, text, ended)
        print(f"distill: answer {k} of {args.distill_n} to each of {len(prompts)} instructions", flush=True)
    rows = [
        {"messages": [*prompt, {"role": "assistant", "content": text}]}
        for prompt, (_, text, ended) in zip(prompts, best_answers, strict=True)
        if ended
    ]
    write_text(Path(args.distill), "".join(json.dumps(row) + "\n" for row in rows))
    print(f"distill: {len(rows)} conversations → {args.distill}", flush=True)
    return {"file": args.distill, "n": args.distill_n, "instructions": len(prompts),
            "conversations": len(rows)}  # fmt: skip


def main() -> None:
    parser = parser_with_runs(__doc__)
    parser.add_argument("--n", default="1,4,16", help="comma-separated numbers of answers to choose among")
    parser.add_argument("--eval-prompts", type=int, default=200, help="held-out instructions to judge")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="answer length limit")
    parser.add_argument("--unfinished-penalty", type=float, default=1.0, help="taken off RM-A's score of "
                        "an answer cut at the token limit")  # fmt: skip
    parser.add_argument("--distill", default="", help="also write RM-A's best answers to the half-A "
                        "instructions to this JSONL of conversations")  # fmt: skip
    parser.add_argument("--distill-n", type=int, default=4, help="answers per instruction chosen among for "
                        "--distill")  # fmt: skip
    args = parser.parse_args()
    try:
        sizes = sorted({int(n) for n in args.n.split(",")})
    except ValueError:
        raise SystemExit(f"--n {args.n!r}: give whole numbers separated by commas, e.g. 1,4,16") from None
    if sizes[0] < 1 or max(sizes[-1], args.distill_n) >= SEED_STRIDE or args.distill_n < 1:
        raise SystemExit(f"--n {args.n!r}, --distill-n {args.distill_n}: each N must be between 1 and "
                         f"{SEED_STRIDE - 1}")  # fmt: skip
    sft_run, out = Path(args.sft), Path(args.out)
    runs = (sft_run, out / "rm_A", out / "rm_B")
    if missing := [str(p) for p in runs if not (p / "model.safetensors").is_file()]:
        raise SystemExit(f"no model.safetensors in {', '.join(missing)}: give the SFT run and a finished "
                         f"bench/align.py --out")  # fmt: skip
    threads = set_threads(available_cores())
    start = time.perf_counter()
    held_out, _ = validation_split(Path(args.data), args.eval_prompts, 0)
    sft, tokenizer = load_model(sft_run), Tokenizer.load(sft_run / "tokenizer")
    rm_a, judge_model = load_reward_model(out / "rm_A"), load_reward_model(out / "rm_B")
    held = Judged(held_out, sft, judge_model, tokenizer, args.max_new_tokens)

    samples, rewards, verdicts = [], [], []  # [k][i]: the k-th answer to instruction i
    for k in range(1, sizes[-1] + 1):
        answers = answer(sft, tokenizer, held_out, args.max_new_tokens, seed_offset=SEED_STRIDE * k)
        samples.append(answers)
        rewards.append(paid_scores(rm_a, tokenizer, held_out, answers, args.unfinished_penalty))
        verdicts.append([judge(p, a[0], finished=a[1]) for p, a in zip(held_out, answers, strict=True)])
        print(f"sampled answer {k} of {sizes[-1]} to each of {len(held_out)} instructions", flush=True)

    selectors = {
        "reward": lambda i, n: best([rewards[k][i] for k in range(n)]),
        "rule": lambda i, n: best([(verdicts[k][i].passes, verdicts[k][i].score) for k in range(n)]),
        "first": lambda i, n: 0,
    }
    results: dict[str, dict] = {}
    for n in sizes:
        for name, pick in selectors.items():
            if (n == 1) != (name == "first"):
                continue  # one answer leaves nothing to choose; among more, the first is just another N = 1
            chosen = [samples[pick(i, n)][i] for i in range(len(held_out))]
            metrics = held.measure_answers(chosen)
            metrics["kl_bound"] = round(math.log(n) - (n - 1) / n, 4) if name == "reward" else None
            results[f"{name}@{n}"] = metrics
            row = {k: metrics[k] for k in ("win_rate", "rule_pass_rate", "rule_win_rate")}
            print(f"{name} best of {n}: {json.dumps(row)}", flush=True)
    distilled = distill(args, sft, rm_a, tokenizer) if args.distill else None
    record = {
        "note": "best-of-N among the SFT policy's own answers, judged as bench/align.py judges a policy",
        "by_selector": results,
        "rule_pass_rate_sft": held.sft_metrics()["rule_pass_rate"],
        "held_out_failed_checks_sft": held.sft_metrics()["failed_checks"],
        "distilled": distilled,
        "args": vars(args),
        "seconds": round(time.perf_counter() - start, 1),
        "threads": threads,
    }
    write_text(RESULTS, json.dumps(record, indent=2) + "\n")
    print(f"→ {RESULTS}")


if __name__ == "__main__":
    main()
