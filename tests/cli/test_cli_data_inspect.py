"""`forge data inspect`: the report's funnel and a reproducible sample of a tiny documents directory."""

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forge.cli.main import main
from forge.data.report import Report


def _docs_dir(root: Path) -> Path:
    """A documents directory as `forge data prepare` writes it: a report and one shard of 12 documents."""
    docs = root / "docs"
    report = Report()
    report.seen = 14
    report.step("read", docs_in=14, bytes_in=4000, docs_out=14, bytes_out=4000, seconds=0.25)
    report.step("length", docs_in=14, bytes_in=4000, docs_out=13, bytes_out=3990, removed={"too_short": 1})
    report.step("exact dedup", docs_in=13, bytes_in=3990, docs_out=12, bytes_out=3700)
    report.remove("too_short", "web.jsonl:3", "4 chars", text="tiny")
    report.remove("exact_duplicate", "web.jsonl:9", "same text as web.jsonl:2", text="[bold]\x1b[31m dup")
    for _ in range(12):
        report.keep("web", chars=300, nbytes=308)
    report.write(docs)
    rows = {
        "id": [f"web.jsonl:{i}" for i in range(12)],
        "text": [f"document {i}\n" + "".join(f"line {j}\n" for j in range(30)) for i in range(12)],
        "source": ["web.jsonl"] * 12,
        "domain": ["web"] * 12,
    }
    with pq.ParquetWriter(docs / "docs-00000.parquet", pa.schema([(c, pa.string()) for c in rows])) as writer:
        for start in range(0, 12, 5):  # several row groups
            writer.write_table(pa.table({c: v[start : start + 5] for c, v in rows.items()}))
    return docs


def test_inspect_prints_the_funnel_and_a_reproducible_sample(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    docs = _docs_dir(tmp_path)
    assert main(["data", "inspect", str(docs), "--samples", "2", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "14 documents" in out and "12 kept" in out
    for step in ("read", "length", "exact dedup", "too_short"):
        assert step in out
    assert out.count("── sample") == 2 and "(source web.jsonl, domain web)" in out
    assert "line 18" in out and "line 19" not in out and "… 11 more lines" in out  # the first 20 lines
    assert main(["data", "inspect", str(docs), "--samples", "2", "--seed", "3"]) == 0
    assert capsys.readouterr().out == out


def test_inspect_shows_the_examples_of_one_reason(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    docs = _docs_dir(tmp_path)
    assert main(["data", "inspect", str(docs), "--reason", "exact_duplicate"]) == 0
    out = capsys.readouterr().out
    assert "web.jsonl:9: same text as web.jsonl:2" in out and "── sample" not in out
    assert "[bold]\\x1b[31m dup" in out  # terminal control characters are shown escaped
    assert main(["data", "inspect", str(docs), "--reason", "nope"]) == 2
    assert "--reason nope" in capsys.readouterr().err


def test_inspect_without_rich_prints_plain_aligned_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("rich", "rich.box", "rich.console", "rich.table", "rich.text"):
        monkeypatch.setitem(sys.modules, module, None)  # importing it now raises ImportError
    assert main(["data", "inspect", str(_docs_dir(tmp_path)), "--samples", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines.index("Funnel") + 1
    assert lines[header].split() == ["step", "docs", "in", "docs", "out", "removed", "bytes", "out", "time"]
    assert lines[header + 4].startswith("exact dedup") and " 13 " in lines[header + 4]
    assert len({len(line) for line in lines[header + 1 : header + 5]}) == 1  # aligned columns


def test_inspect_a_directory_without_report_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["data", "inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'report.json'} not found" in err and f"forge data prepare --out {tmp_path}" in err
    assert "Traceback" not in err
