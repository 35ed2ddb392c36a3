r"""Judge policies trained outside `bench/align.py` as it judges its own, on the same instructions.

Each policy (a run directory, or a `checkpoints/step-N` directory of a DPO or PPO run) answers the
`--select-prompts` selection instructions and the `--eval-prompts` held-out ones of `bench/align.py`'s
split; the judge of a finished `bench/align.py` run (`--out`/rm_B, never optimised against) scores every
answer against the SFT policy's, and the rule gives its pass rate and head-to-head verdict. The judge
then chooses, on the selection instructions alone, the policy the experiment reports
(`chosen`, with its held-out numbers). Results are merged into bench/results/align_judged.json under
`--name`, so several experiments live side by side:

    python bench/align_judge.py --name ppo_ensemble --sft demo_out/runs/long_sft_long \
        --data demo_out/sft --out demo_out/bench_align runs/ppo_ens/checkpoints/step-0000384 ...

`--command` records how the policies were trained (`commands` of the entry). With `--train-prompts N`
the policies are also judged on the first N instructions of half A, the ones they were trained on
(`train_prompts_by_candidate`), to tell what a policy learnt from what it carries to new instructions.
`--average` judges one policy instead: the mean of the given checkpoints' weights.
The README's PPO variants (leave-one-out baseline, larger rollouts, reward-model ensemble) were judged by
the same functions of bench/align.py (`Judged`, `select`) on the same instructions; their checkpoints were
not kept, so this file has no entry for them.
"""

import json
import time
from pathlib import Path
from typing import Any

import torch

from align import Judged, load_policy, parser_with_runs, select, validation_split
from forge.align.formats import read_prompts
from forge.align.reward import load_reward_model
from forge.io import write_text
from forge.model.io import load_model
from forge.model.transformer import Transformer
from forge.runtime import available_cores, set_threads
from forge.tokenizer.bpe import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "align_judged.json"


def averaged(models: list[Transformer]) -> Transformer:
    """The first model holding the element-wise mean of all the models' weights. Every mean is taken
    before any is written: tied weights appear under two names and share one tensor."""
    states = [model.state_dict() for model in models]
    means = {name: torch.stack([state[name].float() for state in states]).mean(0) for name in states[0]}
    with torch.no_grad():
        for name, tensor in states[0].items():
            tensor.copy_(means[name].to(tensor.dtype))
    return models[0]


def main() -> None:
    parser = parser_with_runs(__doc__)
    parser.add_argument("policies", nargs="+", help="run directories or checkpoints/step-N directories")
    parser.add_argument("--name", required=True, help="the experiment's key in align_judged.json")
    parser.add_argument(
        "--command", action="append", default=[], help="the command that trained the policies (repeatable)"
    )
    parser.add_argument("--eval-prompts", type=int, default=200, help="held-out instructions to judge")
    parser.add_argument("--select-prompts", type=int, default=200, help="instructions the judge selects on")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="answer length limit")
    parser.add_argument(
        "--train-prompts", type=int, default=0,
        help="also judge on the first N half-A training instructions (--out/prompts_A.jsonl), the ones PPO "
        "and RM-A's data were drawn from: `train_prompts_by_candidate`, beside the held-out numbers",
    )  # fmt: skip
    parser.add_argument(
        "--average", action="store_true",
        help="judge one policy instead, the uniform average of the given policies' weights (tail averaging "
        "of a run's iterates, as stochastic weight averaging does: Izmailov et al. 2018)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.average and len(args.policies) < 2:
        parser.error("--average needs two or more policies to average")
    if args.train_prompts < 0:
        parser.error(f"--train-prompts must be 0 (off) or more, got {args.train_prompts}")
    sft_run, out = Path(args.sft), Path(args.out)
    paths = [Path(p) for p in args.policies]
    if missing := [str(p) for p in [out / "rm_B", *paths] if not (p / "model.safetensors").is_file()]:
        raise SystemExit(f"no model.safetensors in {', '.join(missing)}: give run or checkpoint directories "
                         f"and a finished bench/align.py --out")  # fmt: skip
    threads = set_threads(available_cores())
    start = time.perf_counter()
    held_out, selection_prompts = validation_split(Path(args.data), args.eval_prompts, args.select_prompts)
    sft, judge_model = load_model(sft_run), load_reward_model(out / "rm_B")
    tokenizer = Tokenizer.load(sft_run / "tokenizer")
    candidates = {str(path): load_policy(path, sft_run) for path in paths}
    if args.average:
        name = f"average of {len(paths)}: {', '.join(map(str, paths))}"
        candidates = {name: averaged(list(candidates.values()))}
    selection = Judged(selection_prompts, sft, judge_model, tokenizer, args.max_new_tokens)
    chosen, selection_table = select(candidates, selection)
    held = Judged(held_out, sft, judge_model, tokenizer, args.max_new_tokens)
    measured = {name: held.measure(model)[0] for name, model in candidates.items()}
    on_train: dict[str, Any] = {}  # with --train-prompts: the same on instructions they trained on
    if args.train_prompts:
        trained_on = Judged(read_prompts(out / "prompts_A.jsonl")[: args.train_prompts], sft, judge_model,
                            tokenizer, args.max_new_tokens)  # fmt: skip
        on_train = {
            "train_prompts_by_candidate": {name: trained_on.measure(m)[0] for name, m in candidates.items()},
            "train_prompts_sft": trained_on.sft_metrics(),
        }
    entry = {
        "chosen": chosen,
        "held_out_chosen": measured[chosen],
        "rule_pass_rate_sft": held.sft_metrics()["rule_pass_rate"],
        "selection": selection_table,
        "held_out_by_candidate": measured,
        **on_train,
        "commands": args.command,
        "args": {k: v for k, v in vars(args).items() if k not in ("policies", "command")},
        "seconds": round(time.perf_counter() - start, 1),
        "threads": threads,
    }
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    write_text(RESULTS, json.dumps(results | {args.name: entry}, indent=2, default=str) + "\n")
    for name, metrics in measured.items():
        row = {k: metrics[k] for k in ("win_rate", "kl", "rule_pass_rate", "rule_win_rate")}
        print(f"{'*' if name == chosen else ' '} {name}: {json.dumps(row)}")


if __name__ == "__main__":
    main()
