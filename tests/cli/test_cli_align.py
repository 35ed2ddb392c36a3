"""`forge reward train`, `forge reward score` and `forge dpo`: every --help, and a tiny run of each."""

import argparse
import json
from pathlib import Path

import pytest
import torch

from forge.cli import align
from forge.model.config import ModelConfig
from forge.model.io import save_model
from forge.model.transformer import Transformer
from forge.tokenizer.bpe import TokenizerConfig, train_tokenizer

COMMANDS = [("reward",), ("reward", "train"), ("reward", "score"), ("dpo",)]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forge")
    align.register(parser.add_subparsers(dest="command", required=True))
    return parser


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_describes_every_option(command: tuple[str, ...], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0
    parser = _parser()
    for name in command:  # walk down to the subcommand's parser
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    for action in parser._actions:
        assert action.help, (
            f"forge {' '.join(command)}: option {action.option_strings or action.dest} has no help"
        )
    assert "usage: forge" in capsys.readouterr().out


def _run(*argv: str) -> None:
    args = _parser().parse_args(list(argv))
    args.handler(args)


def test_train_a_reward_model_score_with_it_and_run_dpo(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pairs = [
        {"prompt": f"say something, {i}", "chosen": f"thanks {i}", "rejected": f"no {i}"} for i in range(8)
    ]
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    tokenizer = train_tokenizer(
        [" ".join(pair.values()) for pair in pairs] * 5, TokenizerConfig(vocab_size=300)
    )
    torch.manual_seed(0)
    base = tmp_path / "base"
    save_model(
        Transformer(
            ModelConfig(vocab_size=320, context_length=32, dim=32, num_layers=1, num_heads=2, num_kv_heads=2)
        ),
        base,
    )
    tokenizer.save(base / "tokenizer")
    common = ["--data", str(prefs), "--max-steps", "2", "--threads", "1", "--no-progress"]
    _run("reward", "train", str(base), *common, "--out", str(tmp_path / "rm"), "--val-fraction", "0.3")
    _run("reward", "score", str(tmp_path / "rm"), "--data", str(prefs), "--threads", "1")
    scored = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(scored) == 8 and {"chosen_score", "rejected_score"} <= scored[0].keys()
    _run("dpo", str(base), *common, "--out", str(tmp_path / "dpo"), "--beta", "0.2")
    assert json.loads((tmp_path / "dpo" / "config.json").read_text())["train"]["beta"] == 0.2
    assert (tmp_path / "dpo" / "model.safetensors").is_file() and (tmp_path / "dpo" / "tokenizer").is_dir()
