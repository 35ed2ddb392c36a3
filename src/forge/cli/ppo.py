"""`forge ppo`."""

import argparse
from typing import Any

from forge.cli.common import add_command
from forge.config import from_args

# loop options PPO does not use: its rollouts sample and measure, and it is not compiled or MFU-timed
UNUSED = ("seq_len", "eval_every", "eval_batches", "sample_every", "sample_prompt", "keep_best", "compile",
          "peak_tflops")  # fmt: skip


def register(commands: Any) -> None:
    from forge.align.ppo import PpoConfig

    p = add_command(
        commands,
        "ppo",
        config_cls=PpoConfig,
        skip=("policy", *UNUSED),
        help="RLHF with PPO: the policy answers prompts, a reward model scores them, a KL penalty holds it",
        description="Train POLICY_RUN (an SFT run) with PPO against the reward model --reward on the prompts "
        "--prompts (JSONL of {'messages': [...]} or {'prompt': ...}): each rollout samples answers, scores "
        "them, and pays −β·KL to the frozen reference per token; advantages by GAE with a value head; "
        "clipped policy and value losses over several epochs per rollout. Writes a run directory that "
        "`forge generate`, `forge chat` and `forge serve` load, with rollouts.jsonl, summary.json, "
        "report.md and loss.png.",
    )
    p.add_argument(
        "policy", metavar="POLICY_RUN", help="run directory of the policy to train (from forge sft)"
    )
    p.set_defaults(handler=_ppo)


def _ppo(args: argparse.Namespace) -> None:
    from forge.align.ppo import PpoConfig, ppo

    config = from_args(PpoConfig, args, extra={"policy": args.policy})
    ppo(config)
