"""`prepare` and its readers on folders, JSONL, Parquet and the standard library, with bad input."""

import gzip
import itertools
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forge.data.dedup import NearDedupConfig
from forge.data.prepare import PrepareConfig, prepare
from forge.data.quality import QualityConfig
from forge.data.sources import iter_inputs, iter_stdlib
from forge.errors import ConfigError, DataError

CODE = "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n"
PROSE = "The quick brown fox jumps over the lazy dog, again and again.\n"


def _config(**options: Any) -> PrepareConfig:
    """The reading and cleaning steps alone: these tiny documents would fail the quality rules, and
    near-duplicate removal has its own tests."""
    defaults = {"quality": QualityConfig(enabled=False), "minhash": NearDedupConfig(enabled=False)}
    return PrepareConfig(**{**defaults, **options})


def _corpus(root: Path) -> Path:
    src = root / "src"
    (src / "pkg" / "__pycache__").mkdir(parents=True)
    (src / "pkg" / "a.py").write_text(CODE)
    (src / "pkg" / "b.py").write_bytes(CODE.replace("\n", "\r\n").encode())  # same after normalising
    (src / "pkg" / "__pycache__" / "a.cpython.py").write_text(CODE + "# cached\n")  # always skipped
    (src / "pkg" / "tiny.py").write_text("x = 1\n")
    (src / "pkg" / "latin1.py").write_bytes(("# caf\xe9\n" + CODE).encode("latin-1"))
    (src / "pkg" / "blob.txt").write_bytes(b"header\x00\x01\x02" * 20)
    (src / "pkg" / "image.png").write_bytes(b"\x89PNG not a text file")
    (src / "README.md").write_text(PROSE * 3)
    (src / "tests").mkdir()
    (src / "tests" / "test_a.py").write_text(CODE + "assert add(1, 1) == 2\n")
    return src


def _read(out: Path) -> list[dict]:
    rows: list[dict] = []
    for path in sorted(out.glob("docs-*.parquet")):
        rows += pq.read_table(path).to_pylist()
    return rows


def test_prepare_a_folder(tmp_path: Path) -> None:
    src = _corpus(tmp_path)
    manifest = prepare(_config(inputs=(str(src),), out=str(tmp_path / "docs"), progress=False))
    rows = _read(tmp_path / "docs")
    assert [r["id"] for r in rows] == ["src/README.md", "src/pkg/a.py", "src/tests/test_a.py"]
    assert {r["id"]: r["domain"] for r in rows}["src/README.md"] == "docs"
    assert rows[1]["text"] == CODE.strip("\n") and rows[1]["domain"] == "code"
    assert manifest["documents"] == 3 and manifest["files"] == ["docs-00000.parquet"]
    report = json.loads((tmp_path / "docs" / "report.json").read_text())
    assert report["removed_by_reason"] == {
        "exact_duplicate": 1,
        "too_short": 1,
        "undecodable": 1,
        "binary": 1,
    }
    assert report["documents_seen"] == 7 and report["kept"] == 3
    assert "same text as src/pkg/a.py" in report["examples"]["exact_duplicate"][0]["detail"]
    assert report["examples"]["undecodable"][0]["where"].endswith("latin1.py")
    assert "`exact_duplicate` | 1" in (tmp_path / "docs" / "report.md").read_text()


def test_include_and_exclude_globs(tmp_path: Path) -> None:
    src = _corpus(tmp_path)
    config = _config(
        inputs=(str(src),),
        out=str(tmp_path / "docs"),
        include=("*.py",),
        exclude=("tests/*",),
        progress=False,
    )
    prepare(config)
    assert [r["id"] for r in _read(tmp_path / "docs")] == ["src/pkg/a.py"]


def test_jsonl_and_parquet_with_bad_lines_reported(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    jsonl = tmp_path / "web.jsonl"
    jsonl.write_text("\n".join([
        json.dumps({"content": PROSE + "one", "domain": "news"}),
        "{not json",
        json.dumps({"other": "no content field"}),
        "",
        json.dumps({"content": PROSE + "two"}),
    ]) + "\n")  # fmt: skip
    gz = tmp_path / "more.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write(json.dumps({"content": PROSE + "three"}) + "\n")
    parquet = tmp_path / "table.parquet"
    pq.write_table(pa.table({"content": [PROSE + "four", None], "id": ["p1", "p2"]}), parquet)
    out = tmp_path / "docs"
    prepare(
        _config(
            inputs=(str(jsonl), str(gz), str(parquet)), out=str(out), text_field="content", progress=False
        )
    )
    rows = _read(out)
    assert [r["text"][-5:] for r in rows] == [".\none", ".\ntwo", "three", "\nfour"]
    assert [r["domain"] for r in rows] == ["news", "web", "more", "table"]  # field, else the file name
    assert rows[3]["id"] == "p1"
    report = json.loads((out / "report.json").read_text())
    assert report["removed_by_reason"] == {"missing_text_field": 2, "malformed_jsonl": 1}
    wheres = [e["where"] for e in report["examples"]["malformed_jsonl"]]
    assert wheres == [f"{jsonl}:2"]
    err = capsys.readouterr().err
    assert f"{jsonl}:2" in err and f"{jsonl}:3" in err and "--text-field" in err


def test_standard_library_is_the_default() -> None:
    problems: list[tuple[str, str, str]] = []
    docs = list(itertools.islice(iter_inputs((), on_problem=lambda *p: problems.append(p)), 3))
    assert all(d.domain == "code" and d.id.endswith(".py") for d in docs)
    topics = [d for d in iter_stdlib(lambda *p: None) if d.domain == "docs"]
    assert len(topics) > 20 and all(isinstance(d.data, str) and d.data for d in topics)
    assert not any("site-packages" in d.source for d in iter_stdlib(lambda *p: None))


def test_bad_inputs_and_outputs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does-not-exist.*does not exist"):
        prepare(_config(inputs=(str(tmp_path / "does-not-exist"),), out=str(tmp_path / "d"), progress=False))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no document was kept"):
        prepare(_config(inputs=(str(tmp_path / "empty"),), out=str(tmp_path / "d"), progress=False))
    assert not (tmp_path / "d").exists()  # nothing half-written
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("do not delete")
    with pytest.raises(ConfigError, match="not a documents directory"):
        prepare(_config(inputs=(str(_corpus(tmp_path)),), out=str(precious), progress=False))
    assert (precious / "notes.txt").read_text() == "do not delete"
    with pytest.raises(ConfigError, match="--max-chars"):
        _config(min_chars=10, max_chars=5)


def test_rerun_replaces_the_output_whole(tmp_path: Path) -> None:
    src = _corpus(tmp_path)
    out = tmp_path / "docs"
    prepare(_config(inputs=(str(src),), out=str(out), progress=False))
    prepare(_config(inputs=(str(src),), out=str(out), include=("*.md",), progress=False))
    assert [r["id"] for r in _read(out)] == ["src/README.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "src"]  # no temporary directories left


def test_shards_roll_over(tmp_path: Path) -> None:
    src = tmp_path / "many"
    src.mkdir()
    for i in range(30):
        (src / f"f{i:02d}.txt").write_text(f"document {i} " + "x" * 50_000)
    out = tmp_path / "docs"
    prepare(_config(inputs=(str(src),), out=str(out), shard_megabytes=1, workers=1, progress=False))
    files = sorted(p.name for p in (tmp_path / "docs").glob("docs-*.parquet"))
    assert files == ["docs-00000.parquet", "docs-00001.parquet"]
    assert [r["id"] for r in _read(tmp_path / "docs")] == [f"many/f{i:02d}.txt" for i in range(30)]
