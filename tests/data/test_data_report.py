"""The data stage's report: the step funnel, merging worker reports, the JSON contract and the pages."""

import json
import re
from pathlib import Path

from forge.data.report import REASONS, Report
from forge.data.report_pages import to_html, to_markdown


def _worker(offset: int = 0) -> Report:
    """A report as one worker task fills it: three steps, removals with text, kept domains, counters."""
    report = Report(max_examples=3, excerpt_chars=10)
    report.seen = 10
    report.step("read", docs_in=10, bytes_in=1000, docs_out=10, bytes_out=1000, seconds=0.5)
    report.step("length", docs_in=10, bytes_in=1000, docs_out=8, bytes_out=900, removed={"too_short": 2})
    report.step("pii", docs_in=8, bytes_in=900, docs_out=8, bytes_out=880, changed=3)
    for i in range(2):
        report.remove("too_short", f"a.jsonl:{offset + i}", "12 chars", text="tiny text " * 3)
    report.keep("web", chars=500, nbytes=520)
    report.keep("code", chars=300, nbytes=300)
    report.count("pii", "email", 2)
    report.describe({"wrong_language": "not in the wanted languages"})
    return report


def test_steps_accumulate_in_first_call_order() -> None:
    report = Report()
    report.step(
        "decode", docs_in=5, bytes_in=50, docs_out=4, bytes_out=40, seconds=1.0, removed={"binary": 1}
    )
    report.step("dedup", docs_in=4, bytes_in=40, docs_out=3, bytes_out=30)
    report.step("decode", docs_in=5, bytes_in=50, docs_out=5, bytes_out=50, seconds=0.5, changed=2)
    steps = report.to_dict()["steps"]
    assert [s["name"] for s in steps] == ["decode", "dedup"]
    assert steps[0] == {
        "name": "decode",
        "docs_in": 10,
        "bytes_in": 100,
        "docs_out": 9,
        "bytes_out": 90,
        "seconds": 1.5,
        "removed": {"binary": 1},
        "changed": 2,
    }


def test_bytes_seen_and_kept_come_from_first_and_last_step() -> None:
    assert Report().to_dict()["bytes_seen"] == Report().to_dict()["bytes_kept"] == 0
    data = _worker().to_dict()
    assert (data["bytes_seen"], data["bytes_kept"]) == (1000, 880)
    assert (data["documents_seen"], data["kept"], data["removed"]) == (10, 2, 2)


def test_merge_sums_counts_caps_examples_and_merges_steps_by_name() -> None:
    merged, other = _worker(), _worker(offset=100)
    other.step("write", docs_in=8, bytes_in=880, docs_out=8, bytes_out=880)
    other.remove("binary", "b.bin", text="\x00")
    merged.merge(other)
    data = merged.to_dict()
    assert [s["name"] for s in data["steps"]] == ["read", "length", "pii", "write"]
    assert data["steps"][1]["docs_in"] == 20 and data["steps"][1]["removed"] == {"too_short": 4}
    assert data["steps"][0]["seconds"] == 1.0
    assert data["removed_by_reason"] == {"too_short": 4, "binary": 1}  # most common first
    assert [e["where"] for e in data["examples"]["too_short"]] == ["a.jsonl:0", "a.jsonl:1", "a.jsonl:100"]
    assert data["kept_by_domain"]["web"] == {"documents": 2, "chars": 1000, "bytes": 1040}
    assert data["counters"] == {"pii": {"email": 4}}
    assert data["meanings"]["wrong_language"] == "not in the wanted languages"
    assert data["meanings"]["too_short"] == REASONS["too_short"]
    assert data["documents_seen"] == 20 and data["bytes_kept"] == 880


def test_examples_keep_a_short_excerpt() -> None:
    example = _worker().to_dict()["examples"]["too_short"][0]
    assert example == {"where": "a.jsonl:0", "detail": "12 chars", "excerpt": "tiny text …"}


def test_to_dict_from_dict_round_trip() -> None:
    report = _worker()
    report.merge(_worker(offset=5))
    report.count("lines_removed", "c4", 12)
    report.extra = {"inputs": ["a.jsonl"]}
    data = report.to_dict()
    assert Report.from_dict(data).to_dict() == data
    assert Report.from_dict(json.loads(json.dumps(data))).to_dict() == data


def test_write_produces_the_three_files(tmp_path: Path) -> None:
    pairs = [{"kept": "a.jsonl:1", "removed": "a.jsonl:7", "similarity": 0.91}]
    extra = {"inputs": ["a.jsonl"], "config": {"min_chars": 32}, "near_duplicate_pairs": pairs}
    _worker().write(tmp_path, title="Prepared corpus", extra=extra)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["extra"] == extra and data["kept"] == 2
    assert Report.from_dict(data).to_dict() == data
    markdown = (tmp_path / "report.md").read_text()
    assert markdown.startswith("# Prepared corpus") and "`too_short` | 2 |" in markdown
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!doctype html>") and "<title>Prepared corpus</title>" in page
    assert "<details><summary>show config</summary>" in page and "0.910" in page
    assert not re.search(r"<script|<link|src=|https?://", page)  # self-contained, nothing fetched


def test_html_escapes_every_piece_of_data() -> None:
    report = Report()
    evil = "<script>alert('x')</script>"
    report.step(evil, docs_in=1, bytes_in=10, docs_out=0, bytes_out=0, removed={evil: 1})
    report.remove(evil, where=f"{evil}.jsonl:1", detail=evil, text=f"hello {evil} & <b>bye</b>")
    report.keep(evil, chars=1, nbytes=1)
    report.count(evil, evil)
    report.describe({evil: evil})
    page = to_html(report.to_dict() | {"extra": {evil: [evil], "config": {evil: evil}}}, title=evil)
    assert "<script" not in page and "<b>bye" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "hello &lt;script&gt;" in page and "&amp; &lt;b&gt;bye&lt;/b&gt;</pre>" in page


def test_markdown_fences_cannot_be_broken_by_backticks() -> None:
    report = Report()
    text = "before\n```\nnot code any more ````` <script>\n```"
    report.remove("binary", where="x`y|z.md", detail="a | b", text=text)
    markdown = to_markdown(report.to_dict())
    fence = "``````"  # one longer than the longest run of backticks (5) in the excerpt
    assert f"{fence}text\n{text}\n{fence}\n" in markdown
    assert "`` x`y\\|z.md ``" in markdown and "a \\| b" in markdown
    assert "<script>" in markdown  # only inside the fenced block, where Markdown shows it as text
    assert markdown.count("<script>") == 1


def test_an_empty_report_renders(tmp_path: Path) -> None:
    Report().write(tmp_path)
    assert "0 documents (0 B) → 0 kept (0 B): – of documents" in (tmp_path / "report.md").read_text()
    assert "No steps were recorded." in (tmp_path / "report.html").read_text()
