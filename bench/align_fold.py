r"""Fold an online DPO record of `bench/align_online.py` into the `bench/align.py` record of the same model:
the judge's round becomes the record's DPO (`dpo_*` summary fields), the offline run's numbers stay
beside it as `dpo_offline_*`, and an `online_dpo` section says where the rounds are recorded.

Both records must come from the same SFT run, judged on the same held-out and selection instructions:
the SFT policy's rule pass rate on the held-out ones must be the same in both, or the two are not
measured like for like and nothing is written. bench/results/align.json got its DPO this way (the
protocol is in bench/align_online.py):

    python bench/align_fold.py bench/results/align_online_third.json bench/results/align.json
"""

import argparse
import json
from pathlib import Path
from typing import Any

from forge.io import write_text

FIELDS = {  # align.json's summary field: (the held-out metric it takes, its name for the offline run's)
    "dpo_win_rate": ("win_rate", "dpo_offline_win_rate"),
    "dpo_kl": ("kl", "dpo_offline_kl"),
    "rule_pass_rate_dpo": ("rule_pass_rate", "dpo_offline_rule_pass_rate"),
    "rule_score_dpo": ("rule_score", "dpo_offline_rule_score"),
    "rule_win_rate_dpo": ("rule_win_rate", "dpo_offline_rule_win_rate"),
    "dpo_policy": (None, "dpo_offline_policy"),
}


def mismatch(online: dict[str, Any], bench: dict[str, Any]) -> str | None:
    """Why the two records are not of the same model and instructions, or None."""
    pairs = {
        "SFT run": (Path(online["args"]["sft"]).resolve(), Path(bench["args"]["sft"]).resolve()),
        "held-out instructions": (online["held_out_prompts"], bench["held_out_prompts"]),
        "selection instructions": (online["selection_prompts"], bench["selection_prompts"]),
        "SFT rule pass rate": tuple(r["summary"]["rule_pass_rate_sft"] for r in (online, bench)),
    }
    differ = [f"{name} ({a} against {b})" for name, (a, b) in pairs.items() if a != b]
    return "; ".join(differ) or None


def fold(online: dict[str, Any], bench: dict[str, Any], online_path: str) -> dict[str, Any]:
    """`bench` with `online`'s chosen round as its DPO (a new dict; neither argument changes)."""
    chosen = online["summary"]["dpo_policy"]
    held = online["held_out_by_candidate"][chosen]
    offline = bench["summary"]
    summary = {key: value for key, value in offline.items() if key not in FIELDS}
    summary |= {key: held[metric] if metric else chosen for key, (metric, _) in FIELDS.items()}
    summary["dpo_method"] = "online: {rounds} rounds of {steps_per_round} steps".format(**online["args"])
    summary |= {renamed: offline[key] for key, (_, renamed) in FIELDS.items() if key in offline}
    section = {
        "record": online_path,
        "chosen": chosen,
        "selection_win_rate": {row["candidate"]: row["win_rate"] for row in online["selection"]},
        "held_out_win_rate": {name: row["win_rate"] for name, row in online["held_out_by_candidate"].items()},
        "seconds": online["seconds"],
    }
    return bench | {"summary": summary, "online_dpo": section}


def read_record(path: str) -> dict[str, Any]:
    """A bench record, or a clear exit when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SystemExit(f"{path} not found: give the path of a bench/results record") from None
    except json.JSONDecodeError as error:
        raise SystemExit(f"{path}, line {error.lineno}: not JSON ({error.msg})") from None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("online", help="the record of bench/align_online.py --method dpo")
    parser.add_argument("bench", help="the record of bench/align.py on the same model (rewritten)")
    args = parser.parse_args()
    online, bench = (read_record(p) for p in (args.online, args.bench))
    if "dpo_policy" not in online["summary"]:
        raise SystemExit(f"{args.online} is not an online DPO record (its summary has no dpo_policy)")
    if "online_dpo" in bench:
        folded_from = bench["online_dpo"]["record"]
        raise SystemExit(f"{args.bench} already holds {folded_from}: fold into a fresh record")
    if reason := mismatch(online, bench):
        raise SystemExit(f"{args.online} and {args.bench} differ in {reason}: judge both on the same model")
    folded = fold(online, bench, args.online)
    write_text(Path(args.bench), json.dumps(folded, indent=2) + "\n")
    print(json.dumps(folded["summary"], indent=2))


if __name__ == "__main__":
    main()
