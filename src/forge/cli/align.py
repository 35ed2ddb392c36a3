"""`forge reward train`, `forge reward score` and `forge dpo`."""

import argparse
from typing import Any

from forge.cli.common import add_command
from forge.config import from_args


def register(commands: Any) -> None:
    from forge.align.dpo import DpoConfig
    from forge.align.reward import RewardConfig, ScoreConfig

    group = commands.add_parser(
        "reward",
        help="train a reward model on preference pairs, or score answers with one",
        description="Train a reward model on preference pairs, or score answers with one.",
    )
    sub = group.add_subparsers(
        dest="reward_command", metavar="COMMAND", required=True, help="what to do with a reward model"
    )
    p = add_command(
        sub,
        "train",
        config_cls=RewardConfig,
        skip=("base",),
        help="train a reward model (Bradley-Terry loss) on preference pairs",
        description="Train a reward model: BASE_RUN's transformer with a scalar head on the last token "
        "(with --likelihood, plus the answer's log-likelihood under its own LM head, gated per token), "
        "trained on preference pairs (JSONL of {'prompt', 'chosen', 'rejected'}) with the Bradley-Terry "
        "loss. Reports the held-out accuracy (chosen scored above rejected) and mean margin before and "
        "after training.",
    )
    p.add_argument("base", metavar="BASE_RUN", help="run directory whose transformer becomes the body")
    p.set_defaults(handler=_train_reward)

    p = add_command(
        sub,
        "score",
        config_cls=ScoreConfig,
        skip=("run",),
        help="score answers (or both sides of preference pairs) with a reward model",
        description="Score each {'prompt', 'answer'} line of --data with the reward model in REWARD_RUN, "
        "or both sides of each preference pair ({'prompt', 'chosen', 'rejected'}) and report the "
        "accuracy. Writes the lines with their scores to --out (JSONL), or prints them.",
    )
    p.add_argument("run", metavar="REWARD_RUN", help="run directory written by `forge reward train`")
    p.set_defaults(handler=_score)

    p = add_command(
        commands,
        "dpo",
        config_cls=DpoConfig,
        skip=("policy",),
        help="align a run on preference pairs with Direct Preference Optimization",
        description="Direct Preference Optimization of POLICY_RUN (usually an SFT run) on preference pairs "
        "(JSONL of {'prompt', 'chosen', 'rejected'}) against a frozen reference (by default the same run), "
        "whose log-probabilities are computed once. Reports the held-out implicit-reward accuracy and "
        "margin before and after; the run directory loads with forge generate/chat/serve.",
    )
    p.add_argument("policy", metavar="POLICY_RUN", help="run directory of the model to align")
    p.set_defaults(handler=_dpo)


def _train_reward(args: argparse.Namespace) -> None:
    from forge.align.reward import RewardConfig, train_reward_model

    train_reward_model(from_args(RewardConfig, args, extra={"base": args.base}))


def _score(args: argparse.Namespace) -> None:
    from forge.align.reward import ScoreConfig, score_file

    score_file(from_args(ScoreConfig, args, extra={"run": args.run}))


def _dpo(args: argparse.Namespace) -> None:
    from forge.align.dpo import DpoConfig, dpo

    dpo(from_args(DpoConfig, args, extra={"policy": args.policy}))
