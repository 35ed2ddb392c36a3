"""The data stage's tasks: the same output in one process, over a process pool and on Ray; a stopped run
resumes with only its unfinished tasks; a changed configuration starts afresh."""

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from forge.data import prepare as prepare_module
from forge.data.dedup import edit_words
from forge.data.prepare import PrepareConfig, prepare
from forge.data.quality import QualityConfig


def _corpus(root: Path) -> Path:
    """Five files of 40 kB of words (three tasks of 0.1 MB), two of them near-duplicates of others."""
    rng = np.random.default_rng(0)
    vocabulary = [f"w{i}" for i in range(3000)]
    src = root / "src"
    src.mkdir()
    texts = [" ".join(rng.choice(vocabulary, size=7_000)) for _ in range(3)]
    texts += [edit_words(texts[0], 0.01, rng, vocabulary), edit_words(texts[1], 0.01, rng, vocabulary)]
    for i, text in enumerate(texts):
        (src / f"f{i}.txt").write_text(text)
    return src


def _config(src: Path, out: Path, **options: Any) -> PrepareConfig:
    quality = QualityConfig(enabled=False)  # the words are random: no rule of prose would pass them
    return PrepareConfig(
        inputs=(str(src),), out=str(out), shard_megabytes=0.1, quality=quality, progress=False, **options
    )


def _contents(out: Path) -> tuple[list[dict], list[str]]:
    files = sorted(p.name for p in out.glob("docs-*.parquet"))
    return [row for name in files for row in pq.read_table(out / name).to_pylist()], files


def test_a_process_pool_gives_the_same_output_as_one_process(tmp_path: Path) -> None:
    src = _corpus(tmp_path)
    prepare(_config(src, tmp_path / "one", workers=1))
    prepare(_config(src, tmp_path / "pool", workers=2))
    rows, files = _contents(tmp_path / "one")
    assert [r["id"] for r in rows] == ["src/f0.txt", "src/f1.txt", "src/f2.txt"]  # the edited copies went
    assert files == ["docs-00000.parquet", "docs-00001.parquet"]  # task 2 held f4 alone, a near-duplicate
    assert _contents(tmp_path / "pool") == (rows, files)
    assert not (tmp_path / "pool.work").exists()  # the work directory goes once the output is in place


def test_a_stopped_run_resumes_with_its_unfinished_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _corpus(tmp_path)
    ran: list[int] = []
    real_clean_task = prepare_module.clean_task

    def counting(config: PrepareConfig, index: int, *rest: Any) -> dict:
        ran.append(index)
        return real_clean_task(config, index, *rest)

    monkeypatch.setattr(prepare_module, "clean_task", counting)

    def crash(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "deduplicate", crash)
    config = _config(src, tmp_path / "docs", workers=1)
    with pytest.raises(KeyboardInterrupt):
        prepare(config)
    assert ran == [0, 1, 2] and not (tmp_path / "docs").exists()
    work = tmp_path / "docs.work"
    (work / "clean-00001.json").unlink()  # as if task 1 had been killed before it finished
    monkeypatch.undo()
    monkeypatch.setattr(prepare_module, "clean_task", counting)
    ran.clear()
    prepare(config)
    assert ran == [1]  # tasks 0 and 2 were complete
    prepare(_config(src, tmp_path / "fresh", workers=1))
    assert _contents(tmp_path / "docs") == _contents(tmp_path / "fresh")


def test_a_changed_configuration_starts_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    src = _corpus(tmp_path)
    monkeypatch.setattr(prepare_module, "deduplicate", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        prepare(_config(src, tmp_path / "docs", workers=1))
    monkeypatch.undo()
    prepare(_config(src, tmp_path / "docs", workers=1, min_chars=10))
    assert "another configuration; starting afresh" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs ray (pip install ray)")
def test_ray_gives_the_same_output(tmp_path: Path) -> None:
    src = _corpus(tmp_path)
    prepare(_config(src, tmp_path / "one", workers=1))
    prepare(_config(src, tmp_path / "ray", workers=2, executor="ray"))
    assert _contents(tmp_path / "ray") == _contents(tmp_path / "one")
