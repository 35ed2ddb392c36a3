r"""Online rounds on top of a finished `bench/align.py` run: the policy answers anew each round, and DPO or
PPO trains it on what is learnt about those answers.

Offline DPO learns from answers the SFT policy sampled; the policy soon answers differently, and the
pairs say less about what it now does. PPO samples its own answers, but its reward model RM-A was fit to
the SFT policy's, and a long run finds answers RM-A overrates. Online rounds keep the data on the policy:

- `--method dpo` (online DPO: Xiong et al. 2024, "Iterative Preference Learning from Human Feedback";
  Dong et al. 2024, "RLHF Workflow"):
  1. the current policy (the SFT policy in round 1) answers every instruction of half A
     (`--out`/prompts_A.jsonl) `--pairs-per-prompt` times two, at temperature 1 and top-p 0.95, with the
     seeds of round r starting at 1000·r;
  2. RM-A scores the distinct answers, an answer cut at the token limit losing `--unfinished-penalty`
     (as PPO's penalty for answers that never end); the best against the worst is a pair (none when all
     tie);
  3. DPO trains the current policy on those pairs for `--steps-per-round` steps, the reference staying
     the SFT policy, so the KL that β holds back is the KL to where alignment started.
- `--method ppo` (iterative RLHF: Touvron et al. 2023, "Llama 2", section 3.2.3, where each round's
  reward model is trained on preferences collected on the latest policy's answers):
  1. round 1 is PPO from the SFT policy against RM-A for `--steps-per-round` steps (β `--kl-coef`,
     `--rollout-batch` answers per rollout, reference: the SFT policy);
  2. from round 2 the current policy answers the half-A instructions as in DPO's step 1, and the rule
     labels every two distinct answers of an instruction, standing in for the people who would label
     the newest policy's answers in the web page (`forge label`). A reward model trained as RM-A was
     (same base and settings, and as many passes over its pairs: steps in proportion to the pairs) on
     A's pairs and every round's labels so far replaces RM-A, and PPO goes on from the current policy
     against it. The judge's half B gets no new labels.

The judge (RM-B, never optimised against) then picks a round on the `--select-prompts` validation
instructions after the `--eval-prompts` ones, and every round is measured on the held-out ones, as
`bench/align.py` does. A round whose record (`--out`/online/roundR.json, online_ppo/ for PPO) and policy
are on disk is reused, not rerun, when it was made with the same settings: `--rounds 8` after
`--rounds 5` adds rounds 6 to 8 (`rounds_reused` lists the others, and `seconds` counts only the work
this command did). Results go to bench/results/align_online.json (DPO) and align_online_ppo.json (PPO),
or to `--results`. Those two were made after the command behind bench/align_first.json (see bench/align.py)
with

    python bench/align_online.py --sft demo_out/runs/long_sft_long --data demo_out/sft \
        --out demo_out/bench_align --rounds R --steps-per-round 160
    python bench/align_online.py --method ppo --sft demo_out/runs/long_sft_long --data demo_out/sft \
        --out demo_out/bench_align --rounds 2 --steps-per-round 384

DPO ran with R = 5, then 8, then 10, each adding rounds to the last. bench/results/
align_online_ppo_rm320.json came from an earlier version of the PPO method whose round reward models
trained for RM-A's 320 steps whatever their pairs (a fifth of RM-A's passes over its pairs at round 2):
run with `--rounds 4`, it was stopped in round 3, round 2 having failed (README), and `--rounds 2` then
judged the two finished rounds. bench/results/align_online_rebuilt.json came from the model rebuilt for
bench/results/align_rank.json (see bench/align.py), in one command:

    python bench/align_online.py --sft demo_out/runs/long_sft_long --data demo_out/sft \
        --out demo_out/bench_align --rounds 10 --steps-per-round 160 \
        --results bench/results/align_online_rebuilt.json

On the model behind bench/results/align.json (the third build), online DPO is the bench's DPO, to a
protocol fixed before it ran: the same ten rounds, in one command,

    python bench/align_online.py --sft demo_out/runs/long_sft_long --data demo_out/sft \
        --out demo_out/bench_align --rounds 10 --steps-per-round 160 \
        --results bench/results/align_online_third.json

then the judge's round (chosen on the selection instructions, as above) fills align.json's `dpo_*`
summary fields whatever it scores, the offline run's numbers staying beside them as `dpo_offline_*`.
DPO counts as reaching the target when that round wins at least 70% of the held-out instructions and
the rule confirms the gain (its pass rate above the SFT policy's, and its head-to-head above one half).
The record bench/results/align_online_third.json was folded into align.json by bench/align_fold.py.
"""

import argparse
import json
import time
from collections import Counter
from functools import cached_property
from pathlib import Path
from typing import Any

from align import Judged, parser_with_runs, reward_ranked_pairs, select, validation_split
from forge.align.dpo import DpoConfig, dpo
from forge.align.formats import read_preferences, read_prompts
from forge.align.ppo import PpoConfig, ppo
from forge.align.reward import RewardConfig, RewardModel, load_reward_model, train_reward_model
from forge.align.sample_pairs import PairConfig, sample_pairs, synthesize
from forge.io import write_text
from forge.model.io import load_model
from forge.runtime import available_cores, set_threads
from forge.tokenizer.bpe import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = {"dpo": ROOT / "bench" / "results" / "align_online.json",
           "ppo": ROOT / "bench" / "results" / "align_online_ppo.json"}  # fmt: skip
COMMON = {"progress": False, "eval_every": 0, "checkpoint_every": 0}


class Rounds:
    """What every round needs: the settings, the SFT run and its tokenizer, the half-A prompts, RM-A."""

    def __init__(self, args: argparse.Namespace, threads: int) -> None:
        self.args, self.threads = args, threads
        self.sft, self.out = Path(args.sft), Path(args.out)
        self.tokenizer = Tokenizer.load(self.sft / "tokenizer")
        self.prompts = read_prompts(self.out / "prompts_A.jsonl")
        self.dir = self.out / ("online" if args.method == "dpo" else "online_ppo")
        self.dir.mkdir(exist_ok=True)
        self.rm_a_config = json.loads((self.out / "rm_A" / "config.json").read_text())["train"]

    @cached_property
    def rm_a(self) -> RewardModel:
        """The reward model that ranks online DPO's answers (loaded once, on first use)."""
        return load_reward_model(self.out / "rm_A")

    @cached_property
    def rm_a_steps_per_pair(self) -> float:
        """RM-A's steps over its pairs: the round reward models make as many passes over theirs."""
        return self.rm_a_config["max_steps"] / len(read_preferences(self.out / "A_train.jsonl"))

    def sample(self, policy: Path, r: int) -> tuple[list, Counter[str]]:
        """The policy's answers to each half-A instruction: `--pairs-per-prompt` pairs, seeds from 1000·r."""
        config = PairConfig(
            max_new_tokens=self.args.max_new_tokens,
            pairs_per_prompt=self.args.pairs_per_prompt,
            seed=1000 * r,
        )
        return sample_pairs(load_model(policy), self.tokenizer, self.prompts, config, progress=False)

    def dpo_round(self, r: int, policy: Path) -> dict[str, Any]:
        """RM-A ranks the policy's answers; DPO on the best against the worst of each instruction."""
        start = time.perf_counter()
        sampled, skipped = self.sample(policy, r)
        pairs_path = self.dir / f"round{r}.jsonl"
        counts = reward_ranked_pairs(
            self.rm_a,
            self.tokenizer,
            sampled,
            "A",
            pairs_path,
            unfinished_penalty=self.args.unfinished_penalty,
        )
        print(f"round {r}: {json.dumps(counts | {'skipped': dict(skipped)})}", flush=True)
        seconds = {"sampling": time.perf_counter() - start}
        config = DpoConfig(policy=str(policy), reference=str(self.sft), data=str(pairs_path),
                           val_data=str(self.out / "B.jsonl"), out=str(self.dir / f"round{r}"),
                           max_steps=self.args.steps_per_round, lr=self.args.dpo_lr, threads=self.threads,
                           **COMMON)  # fmt: skip
        start = time.perf_counter()
        summary = dpo(config)
        seconds["dpo"] = time.perf_counter() - start
        return {"round": r, "pairs": counts, "dpo": summary, "seconds": seconds}

    def ppo_round(self, r: int, policy: Path) -> dict[str, Any]:
        """From round 2, the rule labels pairs of the policy's answers, as people would label the newest
        policy's answers, and a reward model trained like RM-A on A's pairs and every label so far
        replaces it; then PPO from the policy against that reward model."""
        record: dict[str, Any] = {"round": r}
        reward_run, seconds = self.out / "rm_A", {}
        if r > 1:
            start = time.perf_counter()
            sampled, skipped = self.sample(policy, r)
            labels = self.dir / f"labels{r}.jsonl"
            record["labels"] = synthesize(
                sampled, labels, prompts=len(self.prompts), skipped=skipped, every_pair=True
            )
            seconds["sampling"] = time.perf_counter() - start
            print(f"round {r} labels: {json.dumps(record['labels'])[:400]}", flush=True)
            train = self.dir / f"rm{r}_train.jsonl"
            sources = [self.out / "A_train.jsonl"] + [self.dir / f"labels{k}.jsonl" for k in range(2, r + 1)]
            write_text(train, "".join(path.read_text() for path in sources))
            reward_run = self.dir / f"rm{r}"
            steps = round(self.rm_a_steps_per_pair * len(read_preferences(train)))
            start = time.perf_counter()
            record["reward_model"] = train_reward_model(
                RewardConfig(
                    base=str(self.sft),
                    data=str(train),
                    val_data=str(self.out / "B.jsonl"),
                    out=str(reward_run),
                    max_steps=steps,
                    likelihood=self.rm_a_config["likelihood"],
                    threads=self.threads,
                    **COMMON,
                )
            )
            seconds["reward_model"] = time.perf_counter() - start
        config = PpoConfig(policy=str(policy), reference=str(self.sft), reward=str(reward_run),
                           prompts=str(self.out / "prompts_A.jsonl"), out=str(self.dir / f"round{r}"),
                           max_steps=self.args.steps_per_round, lr=self.args.ppo_lr,
                           rollout_batch=self.args.rollout_batch, kl_coef=self.args.kl_coef,
                           max_new_tokens=self.args.max_new_tokens, seed=r, threads=self.threads,
                           **COMMON)  # fmt: skip
        start = time.perf_counter()
        record["ppo"] = ppo(config)
        seconds["ppo"] = time.perf_counter() - start
        return record | {"seconds": seconds}


def main() -> None:
    parser = parser_with_runs(__doc__)
    parser.add_argument("--method", choices=("dpo", "ppo"), default="dpo", help="the optimiser of each round")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of sampling, ranking or labelling, training"
    )
    parser.add_argument("--steps-per-round", type=int, default=160, help="DPO or PPO steps of each round")
    parser.add_argument("--pairs-per-prompt", type=int, default=2, help="pairs of answers sampled per prompt")
    parser.add_argument(
        "--unfinished-penalty", type=float, default=1.0, help="DPO: score lost at the token limit"
    )
    parser.add_argument("--dpo-lr", type=float, default=2e-5, help="DPO learning rate")
    parser.add_argument("--ppo-lr", type=float, default=3e-5, help="PPO learning rate")
    parser.add_argument("--rollout-batch", type=int, default=64, help="PPO: prompts answered per rollout")
    parser.add_argument(
        "--kl-coef", type=float, default=0.1, help="PPO: β of the KL penalty to the SFT policy"
    )
    parser.add_argument("--eval-prompts", type=int, default=200, help="held-out instructions to judge")
    parser.add_argument("--select-prompts", type=int, default=200, help="instructions the judge selects on")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="answer length limit")
    parser.add_argument(
        "--results", default=None,
        help="where the record goes (default: bench/results/align_online.json, or align_online_ppo.json)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.rounds < 1 or args.steps_per_round < 1 or args.pairs_per_prompt < 1:
        parser.error("--rounds, --steps-per-round and --pairs-per-prompt must be at least 1")
    sft_run, data, out, method = Path(args.sft), Path(args.data), Path(args.out), args.method
    needed = [out / "rm_A", out / "rm_B", out / "prompts_A.jsonl", out / "A_train.jsonl", out / "B.jsonl"]
    if missing := [str(p) for p in needed if not p.exists()]:
        raise SystemExit(f"{', '.join(missing)} not found: run bench/align.py --out {out} first")
    held_out, selection_prompts = validation_split(data, args.eval_prompts, args.select_prompts)
    threads = set_threads(available_cores())
    work = Rounds(args, threads)
    run_round = work.dpo_round if method == "dpo" else work.ppo_round
    own = ("dpo_lr", "unfinished_penalty") if method == "dpo" else ("ppo_lr", "rollout_batch", "kl_coef")
    settings = {"sft": str(sft_run.resolve()), "steps_per_round": args.steps_per_round,
                "pairs_per_prompt": args.pairs_per_prompt, **{k: getattr(args, k) for k in own},
                "max_new_tokens": args.max_new_tokens}  # fmt: skip
    if method == "ppo":  # the recipe of each round's reward model (earlier records used RM-A's steps)
        settings["reward_model_steps"] = "RM-A's passes over its pairs"
    current, rounds, reused = sft_run, [], []
    seconds: dict[str, float] = {}
    for r in range(1, args.rounds + 1):
        record_path = work.dir / f"round{r}.json"
        if record_path.exists() and (work.dir / f"round{r}" / "model.safetensors").exists():
            record = json.loads(record_path.read_text())
            if record.pop("settings") != settings:
                raise SystemExit(
                    f"{record_path} was made with other settings than {settings}: pass the same "
                    f"settings to continue those rounds, or another --out to start afresh"
                )
            reused.append(r)
        else:
            record = run_round(r, current)
            for part, spent in record["seconds"].items():
                seconds[part] = seconds.get(part, 0.0) + spent
            write_text(record_path, json.dumps(record | {"settings": settings}, indent=2, default=str) + "\n")
        rounds.append(record)
        current = work.dir / f"round{r}"

    start = time.perf_counter()
    sft, judge_model = load_model(sft_run), load_reward_model(out / "rm_B")
    candidates = {
        f"online_{method}@round{r}": load_model(work.dir / f"round{r}") for r in range(1, args.rounds + 1)
    }
    selection = Judged(selection_prompts, sft, judge_model, work.tokenizer, args.max_new_tokens)
    chosen, selection_table = select(candidates, selection)
    held = Judged(held_out, sft, judge_model, work.tokenizer, args.max_new_tokens)
    measured = {name: held.measure(model)[0] for name, model in candidates.items()}
    seconds["evaluation"] = time.perf_counter() - start
    final, sft_rule = measured[chosen], held.sft_metrics()
    summary = {
        f"{method}_win_rate": final["win_rate"],
        f"{method}_kl": final["kl"],
        "rule_pass_rate_sft": sft_rule["rule_pass_rate"],
        f"rule_pass_rate_{method}": final["rule_pass_rate"],
        f"rule_win_rate_{method}": final["rule_win_rate"],
        f"{method}_policy": chosen,
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
        "rounds_reused": reused,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "threads": threads,
    }
    results = Path(args.results) if args.results else RESULTS[method]
    write_text(results, json.dumps(payload, indent=2, default=str) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
