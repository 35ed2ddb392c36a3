"""The pictures and the markdown report of a PPO run (`forge.align.ppo`), from its logs and summary."""

import textwrap
from pathlib import Path
from typing import Any

from forge.train.metrics import read_metrics

# what a rollout measures, mean per answer: the summary holds each before and after training
MEASURED = ("score", "reward", "kl", "entropy", "answer_length", "ended_fraction")


def before_and_after(records: list[dict[str, Any]], after: dict[str, float]) -> dict[str, float]:
    """`{measure}_before` from the first rollout (the initial policy), `{measure}_after` from `after` (a
    rollout of the trained policy), the largest KL of any rollout and the final β."""
    first = records[0] if records else after
    summary = {
        f"{key}_{when}": rollout[key]
        for key in MEASURED
        for when, rollout in (("before", first), ("after", after))
    }
    return summary | {
        "kl_max": max([r["kl"] for r in records] + [after["kl"]]),
        "kl_coef_final": after["kl_coef"],
    }


def paid_label(group_reward: str | None = None) -> str:
    """What a rollout's mean "reward" is: the score as paid, less the KL penalty. `group_reward` (loo or
    rank): how each answer was paid against its prompt's other answers (`--samples-per-prompt` > 1)."""
    paid = "score + no-end penalty"
    if group_reward == "loo":
        paid += " − the prompt's other answers' mean"
    elif group_reward == "rank":
        paid = f"rank of ({paid}) among the prompt's answers"
    return paid + " − β·KL"


def plot_ppo(run_dir: Path, *, group_reward: str | None = None) -> None:
    """Draw loss.png: the PPO loss, the mean score and reward (`paid_label`), and the KL to the reference,
    against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = [r for r in read_metrics(run_dir / "metrics.jsonl") if "train_loss" in r]
    rollouts = read_metrics(run_dir / "rollouts.jsonl")
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot([r["step"] for r in losses], [r["train_loss"] for r in losses], "o-", ms=3, color="#4c72b0")
    axes[0].set(xlabel="step", ylabel="policy + vf_coef · value loss", title="PPO loss")
    steps = [r["step"] for r in rollouts]
    axes[1].plot(steps, [r["score"] for r in rollouts], "o-", ms=3, label="reward model score")
    paid = textwrap.fill(paid_label(group_reward), 40)
    axes[1].plot(steps, [r["reward"] for r in rollouts], "o-", ms=3, label=paid)
    axes[1].set(xlabel="step", title="mean per answer")
    # below the panel, not over its points
    axes[1].legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=2)
    axes[2].plot(steps, [r["kl"] for r in rollouts], "o-", ms=3, color="#c44e52")
    axes[2].set(xlabel="step", ylabel="nats per answer", title="KL(policy ‖ reference)")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"PPO · {run_dir.name}")
    fig.tight_layout()
    fig.savefig(run_dir / "loss.png", dpi=110)
    plt.close(fig)


def ppo_report(run_dir: Path, s: dict[str, Any]) -> str:
    """report.md: what the run changed, before and after, and a few answers of the trained policy."""
    group_reward = s.get("group_reward")
    names = {"score": "reward model score", "reward": paid_label(group_reward), "kl": "KL to the "
             "reference (nats/answer)", "entropy": "entropy (nats/token)", "answer_length": "answer length "
             "(tokens)", "ended_fraction": "answers that ended"}  # fmt: skip
    lines = [
        f"# PPO report: {run_dir.name}", "",
        f"Policy `{s['policy']}`, reward `{s['reward']}`; {s['steps']:,} updates on {s['rollouts']:,} "
        f"rollouts ({100 * s['trainable_fraction']:.2f}% of the weights trained). Before: the first "
        "rollout; after: a fresh rollout of the trained policy.", "",
        "| mean per answer | before | after |", "|---|---:|---:|",
        *(f"| {names[k]} | {s[f'{k}_before']:.4f} | {s[f'{k}_after']:.4f} |" for k in MEASURED),
        "", f"Largest KL of a rollout: {s['kl_max']:.4f}; final β {s['kl_coef_final']:.4g}.", "",
        "![loss](loss.png)", "", "## Answers of the trained policy", "",
        *(f"- ({x['score']:.3f}{'' if x['ended'] else ', did not end'}) {x['prompt']!r} → {x['answer']!r}"
          for x in s["samples_after"]),
        "",
    ]  # fmt: skip
    return "\n".join(lines)
