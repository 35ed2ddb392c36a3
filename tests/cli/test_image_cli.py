"""`forge data images` and `forge image train|generate|eval`: help, errors without tracebacks, and a tiny
run of each model end to end."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from forge.cli.main import build_parser, main

IMAGE_COMMANDS = [("data", "images"), ("image", "train"), ("image", "generate"), ("image", "eval")]


@pytest.mark.parametrize("command", IMAGE_COMMANDS, ids=" ".join)
def test_help(command: tuple[str, ...], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: forge {' '.join(command)}" in capsys.readouterr().out


def test_train_help_describes_every_model_option(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["image", "train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--model {diffusion,vae,gan}" in out
    assert "[diffusion]" in out and "[vae" in out and "[gan" in out
    assert "--levels INT" in out and "--latent-dim INT" in out and "--noise-dim INT" in out
    train = _subparser(_subparser(build_parser(), "image"), "train")
    train.format_help()  # the model options are added on first use
    assert all(action.help for action in train._actions), [a.dest for a in train._actions if not a.help]


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def test_building_the_parser_does_not_import_diffusers() -> None:
    code = "import sys; from forge.cli.main import build_parser as b; b(); print('diffusers' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    )


def test_train_refuses_an_option_of_another_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["image", "train", "--model", "gan", "--levels", "3", "--out", str(tmp_path / "r")]
    assert main(argv) == 2  # --levels is the diffusion UNet's
    assert "--levels: not an option of --model gan" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_eval_and_generate_refuse_a_directory_that_is_not_an_image_run(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["image", "eval", str(tmp_path)]) == 2
    assert "is not an image run directory" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"kind": "transformer"}))
    assert main(["image", "generate", str(tmp_path), "a handwritten seven"]) == 2
    err = capsys.readouterr().err
    assert "is not an image run" in err and "Traceback" not in err


def test_data_images_writes_the_digits(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "images", "--out", str(tmp_path / "digits"), "--val-fraction", "0.2"]) == 0
    manifest = json.loads((tmp_path / "digits" / "manifest.json").read_text())
    assert manifest["counts"]["val"] == 359 and "train 1,438 images" in capsys.readouterr().out


TINY = ["--width", "8", "--cond-dim", "8", "--text-encoder", "small", "--batch-size", "16",
        "--max-steps", "3", "--sample-every", "0", "--checkpoint-every", "0", "--no-progress",
        "--threads", "1"]  # fmt: skip
TINY_MODEL = {
    "diffusion": ["--levels", "2", "--warmup-steps", "1", "--sample-steps", "2", "--eval-steps", "2"]
}


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A prepared digits set and a tiny run of each model, trained through the CLI."""
    root = tmp_path_factory.mktemp("image-cli")
    data = root / "digits"
    assert main(["data", "images", "--out", str(data)]) == 0
    runs = {}
    for kind in ("diffusion", "vae", "gan"):
        runs[kind] = root / kind
        argv = ["image", "train", "--model", kind, "--data", str(data), "--out", str(runs[kind])]
        assert main([*argv, *TINY, *TINY_MODEL.get(kind, [])]) == 0
    return runs


@pytest.mark.slow
def test_generate_writes_grids_strips_and_guidance_grids(tiny_runs: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    run = str(tiny_runs["diffusion"])
    prompts = ["a handwritten three", "digit 4"]
    assert (
        main(["image", "generate", run, *prompts, "--num", "3", "--steps", "2", "--out", f"{tmp_path}/a.png"])
        == 0
    )
    assert (
        main(["image", "generate", run, *prompts, "--num", "3", "--steps", "2", "--out", f"{tmp_path}/b.png"])
        == 0
    )
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()  # same seed, same picture
    argv = ["image", "generate", run, "seven", "--steps", "4", "--progression", "--out", f"{tmp_path}/p.png"]
    assert main(argv) == 0
    argv = ["image", "generate", run, "7", "--steps", "2", "--guidance-grid", "0,1,3", "--seeds", "2"]
    assert main([*argv, "--out", f"{tmp_path}/g.png"]) == 0
    sizes = {name: Image.open(tmp_path / f"{name}.png").size for name in "apg"}
    cell = 8 * 4 + 2  # 8×8 digits drawn 4× with a 2-pixel gap
    assert [sizes[name][1] for name in "apg"] == [2 * cell + 2, cell + 2, 3 * cell + 2]  # rows
    assert sizes["p"][0] >= 5 * cell  # the noise, then 4 steps
    for kind in ("vae", "gan"):
        assert (
            main(["image", "generate", str(tiny_runs[kind]), "digit 5", "--out", f"{tmp_path}/{kind}.png"])
            == 0
        )
    assert main(["image", "generate", str(tiny_runs["vae"]), "5", "--progression"]) == 2


@pytest.mark.slow
def test_eval_compares_the_three_runs_in_one_table(
    tiny_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    runs = [str(tiny_runs[kind]) for kind in ("diffusion", "vae", "gan")]
    out = tmp_path / "eval.json"
    argv = ["image", "eval", *runs, "--prompts-per-class", "2", "--steps", "2", "--json", str(out)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "real held-out images" in table and all(run in table for run in runs)
    result = json.loads(out.read_text())
    assert [row["model"] for row in result["rows"]] == ["real", "diffusion", "vae", "gan"]
    assert all(row["samples"] == 20 for row in result["rows"][1:])
    assert result["yardstick"]["classifier_accuracy"] >= 0.97
