"""The data stage's report as pages for people: Markdown (`report.md`), HTML (`report.html`) and the
tables `forge data inspect` prints, all rendered from the `report.json` dictionary (see
`forge.data.report` for its keys).

The HTML page is one self-contained file (inline CSS, no script, nothing fetched) and every piece of text
that came from the data is escaped: documents are untrusted input. In Markdown, excerpts sit in fences
longer than any backtick run inside them.
"""

import html
import json
import re
from collections.abc import Mapping
from typing import Any

# ---- formatting shared by the pages -----------------------------------------------------------------


def human_bytes(n: float) -> str:
    """1536 → '1.5 KiB'."""
    unit = "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            break
        n /= 1024
    return f"{n:,.0f} B" if unit == "B" else f"{n:,.1f} {unit}"


def human_seconds(seconds: float) -> str:
    """0.25 → '0.25 s', 754 → '12.6 min'."""
    if seconds >= 120:
        return f"{seconds / 60:,.1f} min"
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:,.1f} s"


def percent(part: float, whole: float) -> str:
    """`part` as a percentage of `whole` ('–' when `whole` is 0)."""
    return f"{100 * part / whole:.1f}%" if whole else "–"


def step_removed(step: Mapping[str, Any]) -> int:
    """Documents a step removed: its per-reason counts, else the documents it did not pass on."""
    return sum(step["removed"].values()) or max(step["docs_in"] - step["docs_out"], 0)


def headline(data: Mapping[str, Any]) -> str:
    """'1,000 documents (2.0 MiB) → 800 kept (1.5 MiB): 80.0% of documents, 75.0% of bytes'."""
    seen, kept, bytes_seen, bytes_kept = (
        data[k] for k in ("documents_seen", "kept", "bytes_seen", "bytes_kept")
    )
    return (
        f"{seen:,} documents ({human_bytes(bytes_seen)}) → {kept:,} kept ({human_bytes(bytes_kept)}): "
        f"{percent(kept, seen)} of documents, {percent(bytes_kept, bytes_seen)} of bytes"
    )


def text_tables(data: Mapping[str, Any]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """The funnel, the removals and the kept domains as titled (header, rows) of plain text, for the
    Markdown page and the terminal; the `changed` column only when some step changed documents."""
    changed = any(s["changed"] for s in data["steps"])
    funnel = ["step", "docs in", "docs out", "removed"] + ["changed"] * changed + ["bytes out", "time"]
    steps = [
        [s["name"], f"{s['docs_in']:,}", f"{s['docs_out']:,}", f"{step_removed(s):,}"]
        + [f"{s['changed']:,}"] * changed
        + [human_bytes(s["bytes_out"]), human_seconds(s["seconds"])]
        for s in data["steps"]
    ]
    reasons = [
        [r, f"{n:,}", percent(n, data["removed"]), data["meanings"].get(r, "")]
        for r, n in data["removed_by_reason"].items()
    ]
    kept_bytes = sum(row["bytes"] for row in data["kept_by_domain"].values())
    domains = [
        [
            d,
            f"{r['documents']:,}",
            f"{r['chars']:,}",
            human_bytes(r["bytes"]),
            percent(r["bytes"], kept_bytes),
        ]
        for d, r in data["kept_by_domain"].items()
    ]
    return {
        "Funnel": (funnel, steps),
        "Removed, by reason": (["reason", "documents", "share", "meaning"], reasons),
        "Kept, by domain": (["domain", "documents", "characters", "bytes", "share of bytes"], domains),
    }


def numeric_columns(header: list[str]) -> tuple[int, ...]:
    """Indices of the columns of a `text_tables` table to right-align: all but the name and meaning."""
    return tuple(i for i, name in enumerate(header) if i and name != "meaning")


# ---- Markdown ---------------------------------------------------------------------------------------


def _fence(text: str, char: str = "`", least: int = 3) -> str:
    """A run of `char` longer than any run of it inside `text`, so `text` cannot close the fence."""
    longest = max((len(run) for run in re.findall(f"{re.escape(char)}+", text)), default=0)
    return char * max(least, longest + 1)


def _md_code(text: str) -> str:
    """`text` as inline code on one line, safe inside a table cell."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    if not text:
        return ""
    fence = _fence(text, least=1)
    pad = " " if text.startswith("`") or text.endswith("`") or fence != "`" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_text(text: str) -> str:
    """Plain text from the data in a table cell: escaped so it renders as itself, on one line."""
    text = html.escape(" ".join(str(text).split()), quote=False)
    return re.sub(r"([\\`*_\[\]|#!])", r"\\\1", text)


def _md_block(text: str, info: str = "text") -> list[str]:
    fence = _fence(text)
    return [f"{fence}{info}", text, fence]


def _md_table(header: list[str], rows: list[list[str]], numbers: tuple[int, ...] = (1,)) -> list[str]:
    """A Markdown table; the columns at indices `numbers` are right-aligned."""
    align = ["---:" if i in numbers else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _md_extra(extra: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    for key, value in extra.items():
        lines += ["", f"### {_md_text(key.replace('_', ' '))}", ""]
        if key == "near_duplicate_pairs" and _is_pairs(value):
            rows = [[_md_code(p["kept"]), _md_code(p["removed"]), f"{p['similarity']:.3f}"] for p in value]
            lines += _md_table(["kept", "removed", "similarity"], rows, (2,))
        elif isinstance(value, Mapping) and key != "config" and _all_scalars(value.values()):
            lines += _md_table(["", "value"], [[_md_code(k), _md_text(_scalar(v))] for k, v in value.items()])
        elif isinstance(value, list) and _all_scalars(value):
            lines += [f"- {_md_code(_scalar(item))}" for item in value]
        elif _all_scalars([value]):
            lines.append(_md_text(_scalar(value)))
        else:  # config and anything nested: collapsed, as on the HTML page
            block = _md_block(json.dumps(value, indent=2, ensure_ascii=False), "json")
            lines += [f"<details><summary>show {_md_text(key)}</summary>", "", *block, "", "</details>"]
    return lines


def to_markdown(data: Mapping[str, Any], title: str = "Data preparation report") -> str:
    """The report as a Markdown page: headline, funnel, removals, domains, examples, counters, extra."""
    lines = [f"# {_md_text(title)}", "", f"**{headline(data)}**"]
    for name, (header, rows) in text_tables(data).items():
        cells = [[_md_code(row[0])] + [_md_text(cell) for cell in row[1:]] for row in rows]
        lines += ["", f"## {name}", ""] + (
            _md_table(header, cells, numeric_columns(header)) if rows else ["None."]
        )
    if data["examples"]:
        lines += ["", "## Examples"]
    for reason, examples in data["examples"].items():
        count, meaning = data["removed_by_reason"].get(reason, 0), _md_text(data["meanings"].get(reason, ""))
        lines += ["", f"### {_md_code(reason)}: {count:,}" + (f" — {meaning}" if meaning else ""), ""]
        for example in examples:
            detail = f": {_md_text(example['detail'])}" if example["detail"] else ""
            lines += [f"{_md_code(example['where']) or '(unknown)'}{detail}", ""]
            if example.get("excerpt"):
                lines += [*_md_block(example["excerpt"]), ""]
    if data["counters"]:
        lines += ["", "## Counters"]
    for group, kinds in data["counters"].items():
        lines += ["", f"### {_md_text(group.replace('_', ' '))}", ""]
        lines += _md_table(["kind", "count"], [[_md_code(k), f"{n:,}"] for k, n in kinds.items()])
    if data.get("extra"):
        lines += ["", "## Run", *_md_extra(data["extra"])]
    return "\n".join(lines) + "\n"


def _scalar(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _all_scalars(values: Any) -> bool:
    return all(isinstance(v, str | int | float | bool) or v is None for v in values)


def _is_pairs(value: Any) -> bool:
    keys = {"kept", "removed", "similarity"}
    return isinstance(value, list) and all(isinstance(p, Mapping) and keys <= p.keys() for p in value)


# ---- HTML -------------------------------------------------------------------------------------------

_CSS = """
:root{--bg:#f6f7f9;--card:#fff;--ink:#1d2430;--muted:#5f6b7a;--line:#e3e7ec;--docs:#3566d6;--bytes:#8fb0f0;
--cut:#d4493f;--chg:#b7791f;--code:#f1f3f6}@media (prefers-color-scheme:dark){:root{--bg:#14171c;
--card:#1c2027;--ink:#e6e9ee;--muted:#9aa5b4;--line:#2c323c;--docs:#6e9bff;--bytes:#3b5a99;--cut:#ff7b72;
--chg:#e3b341;--code:#252a33}}*{box-sizing:border-box}body{margin:0;background:var(--bg);color:var(--ink);
line-height:1.45;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}main{
max-width:1100px;margin:0 auto;padding:24px 16px 48px}h1{font-size:1.6rem;margin:0 0 .3rem}h2{
font-size:1.2rem;margin:0 0 .8rem}h3{font-size:1rem;margin:1rem 0 .5rem}section,header{
background:var(--card);border:1px solid var(--line);border-radius:10px;padding:18px 20px;margin:0 0 16px}
.lede{color:var(--muted);margin:0 0 1rem}.muted{color:var(--muted)}.note{color:var(--muted);
font-size:.85rem}code,pre{font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}code{
background:var(--code);border-radius:4px;padding:1px 5px;overflow-wrap:anywhere}pre{background:var(--code);
border-radius:6px;padding:10px 12px;margin:.4rem 0 0;white-space:pre-wrap;overflow-wrap:anywhere;
max-height:18em;overflow:auto}.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(180px,1fr));
gap:12px}.tile{border:1px solid var(--line);border-radius:8px;padding:10px 14px}.tile .k{font-size:.8rem;
color:var(--muted);text-transform:uppercase;letter-spacing:.04em}.tile .v{font-size:1.25rem;font-weight:600;
font-variant-numeric:tabular-nums}.funnel{list-style:none;margin:0;padding:0}.funnel li{display:grid;
grid-template-columns:10rem 1fr 19rem;gap:4px 14px;align-items:center;padding:8px 0;
border-top:1px solid var(--line)}.funnel .name{font-weight:600;overflow-wrap:anywhere}.funnel .name small{
display:block;font-weight:400}.track{background:var(--code);border-radius:4px;overflow:hidden}.bar{
height:14px;background:var(--docs)}.bar.b{height:6px;background:var(--bytes)}.why{font-size:.8rem;
color:var(--muted);margin-top:3px;overflow-wrap:anywhere}.nums{font-size:.9rem;
font-variant-numeric:tabular-nums}.cut{color:var(--cut);font-weight:600}.chg{color:var(--chg)}.key{
display:inline-block;width:12px;height:10px;border-radius:2px;vertical-align:baseline}.scroll{
overflow-x:auto}table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}th,td{
text-align:left;padding:6px 10px;border-bottom:1px solid var(--line);vertical-align:top}th{font-size:.8rem;
color:var(--muted);font-weight:600;text-transform:uppercase;letter-spacing:.03em}td.n,th.n{text-align:right;
white-space:nowrap}.share{display:flex;align-items:center;gap:8px;min-width:9rem}.share span{display:block;
height:8px;border-radius:4px;background:var(--docs)}details{border:1px solid var(--line);border-radius:8px;
padding:8px 12px;margin:8px 0}summary{cursor:pointer;overflow-wrap:anywhere}.example{
border-top:1px dashed var(--line);padding:10px 0 4px}.example:first-of-type{border-top:0}.cards{
display:grid;grid-template-columns:repeat(auto-fit,minmax(240px,1fr));gap:12px}.cards>div{
border:1px solid var(--line);border-radius:8px;padding:4px 12px 10px}ul{margin:.3rem 0;padding-left:1.2rem}
@media (max-width:700px){main{padding:12px 8px}section,header{padding:14px 12px}.funnel li{
grid-template-columns:1fr}.funnel .name small{display:inline;margin-left:.6em}.tiles{gap:8px}.tile{
padding:8px 10px}.tile .v{font-size:.95rem}th,td{padding:5px 6px;font-size:.85rem}.share{min-width:0}
.share span{display:none}th{letter-spacing:0}}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _html_table(header: list[str], rows: list[list[str]], numbers: tuple[int, ...] = (1,)) -> str:
    """A table from already-escaped cells; the columns at indices `numbers` are right-aligned."""
    cls = [' class="n"' if i in numbers else "" for i in range(len(header))]
    head = "".join(f"<th{c}>{h}</th>" for c, h in zip(cls, header, strict=True))
    body = "".join(
        "<tr>" + "".join(f"<td{c}>{cell}</td>" for c, cell in zip(cls, row, strict=True)) + "</tr>"
        for row in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _share(part: float, whole: float) -> str:
    width = 100 * part / whole if whole else 0
    return f'<div class="share"><span style="width:{width:.1f}%"></span>{percent(part, whole)}</div>'


def _html_funnel(steps: list[Mapping[str, Any]]) -> str:
    if not steps:
        return '<p class="muted">No steps were recorded.</p>'
    most_docs = max(max(s["docs_in"], s["docs_out"]) for s in steps) or 1
    most_bytes = max(max(s["bytes_in"], s["bytes_out"]) for s in steps) or 1
    rows = []
    for s in steps:
        why = " · ".join(f"{_e(r)} {n:,}" for r, n in s["removed"].items())
        cut, chg = step_removed(s), s["changed"]
        docs_width, bytes_width = 100 * s["docs_out"] / most_docs, 100 * s["bytes_out"] / most_bytes
        rows.append(
            f'<li><div class="name">{_e(s["name"])}<small class="muted">{human_seconds(s["seconds"])}</small>'
            f'</div><div><div class="track"><div class="bar" style="width:{docs_width:.2f}%"></div>'
            f'<div class="bar b" style="width:{bytes_width:.2f}%"></div></div>'
            + (f'<div class="why">{why}</div>' if why else "")
            + f'</div><div class="nums"><b>{s["docs_out"]:,}</b> docs · {human_bytes(s["bytes_out"])}'
            + (f' <span class="cut">−{cut:,}</span>' if cut else "")
            + (f' <span class="chg">{chg:,} changed</span>' if chg else "")
            + "</div></li>"
        )
    legend = (
        '<p class="note"><span class="key" style="background:var(--docs)"></span> documents left after each '
        'step &nbsp; <span class="key" style="background:var(--bytes)"></span> bytes left &nbsp; '
        '<span class="cut">−n</span> removed &nbsp; time is worker time summed over tasks</p>'
    )
    return legend + '<ol class="funnel">' + "".join(rows) + "</ol>"


def _html_examples(data: Mapping[str, Any]) -> str:
    parts = []
    for i, (reason, examples) in enumerate(data["examples"].items()):
        meaning = data["meanings"].get(reason, "")
        count = data["removed_by_reason"].get(reason, 0)
        cards = "".join(
            f'<div class="example"><code>{_e(x["where"] or "(unknown)")}</code>'
            + (f' <span class="muted">{_e(x["detail"])}</span>' if x["detail"] else "")
            + (f"<pre>{_e(x['excerpt'])}</pre>" if x.get("excerpt") else "")
            + "</div>"
            for x in examples
        )
        parts.append(
            f"<details{' open' if i < 3 else ''}><summary><code>{_e(reason)}</code> <b>{count:,}</b> "
            f'<span class="muted">{_e(meaning)}</span></summary>{cards}</details>'
        )
    return "".join(parts)


def _html_value(key: str, value: Any) -> str:
    """One entry of `extra`, shown by its shape: pairs and flat mappings as tables, lists as lists."""
    if key == "near_duplicate_pairs" and _is_pairs(value):
        rows = [[f"<code>{_e(p['kept'])}</code>", f"<code>{_e(p['removed'])}</code>"] for p in value]
        rows = [row + [f"{p['similarity']:.3f}"] for row, p in zip(rows, value, strict=True)]
        return _html_table(["kept", "removed", "similarity"], rows, numbers=(2,))
    if isinstance(value, Mapping) and key != "config" and _all_scalars(value.values()):
        numbers = [v for v in value.values() if isinstance(v, int | float) and not isinstance(v, bool)]
        total = sum(numbers) if len(numbers) == len(value) and min(numbers, default=0) >= 0 else 0
        rows = [
            [f"<code>{_e(k)}</code>", _e(_scalar(v))] + ([_share(v, total)] if total else [])
            for k, v in value.items()
        ]
        return _html_table(["", "value"] + (["share"] if total else []), rows)
    if isinstance(value, list) and _all_scalars(value):
        return "<ul>" + "".join(f"<li><code>{_e(_scalar(item))}</code></li>" for item in value) + "</ul>"
    if _all_scalars([value]):
        return f"<p>{_e(_scalar(value))}</p>"
    dump = _e(json.dumps(value, indent=2, ensure_ascii=False))
    return f"<details><summary>show {_e(key)}</summary><pre>{dump}</pre></details>"


def _section(title: str, body: str) -> str:
    return f"<section><h2>{title}</h2>{body}</section>" if body else ""


def to_html(data: Mapping[str, Any], title: str = "Data preparation report") -> str:
    """The report as one self-contained HTML page (inline CSS, no script); all data text is escaped."""
    seen, kept, removed = data["documents_seen"], data["kept"], data["removed"]
    bytes_seen, bytes_kept = data["bytes_seen"], data["bytes_kept"]
    tiles = [
        ("documents", f"{seen:,} → {kept:,}", f"{percent(kept, seen)} kept"),
        (
            "bytes",
            f"{human_bytes(bytes_seen)} → {human_bytes(bytes_kept)}",
            f"{percent(bytes_kept, bytes_seen)} kept",
        ),
        ("removed", f"{removed:,}", f"{len(data['removed_by_reason'])} reasons"),
        (
            "worker time",
            human_seconds(sum(s["seconds"] for s in data["steps"])),
            f"{len(data['steps'])} steps",
        ),
    ]
    tiles_html = "".join(
        f'<div class="tile"><div class="k">{k}</div><div class="v">{v}</div>'
        f'<div class="muted">{sub}</div></div>'
        for k, v, sub in tiles
    )
    reasons = [
        [f'<code>{_e(r)}</code><div class="note">{_e(data["meanings"].get(r, ""))}</div>', f"{n:,}"]
        + [_share(n, removed)]
        for r, n in data["removed_by_reason"].items()
    ]
    kept_bytes = sum(d["bytes"] for d in data["kept_by_domain"].values())
    domains = [
        [
            f"<code>{_e(d)}</code>",
            f"{r['documents']:,}",
            human_bytes(r["bytes"]),
            _share(r["bytes"], kept_bytes),
        ]
        for d, r in data["kept_by_domain"].items()
    ]
    counters = "".join(
        f"<div><h3>{_e(group.replace('_', ' '))}</h3>"
        + _html_table(["kind", "count"], [[f"<code>{_e(k)}</code>", f"{n:,}"] for k, n in kinds.items()])
        + "</div>"
        for group, kinds in data["counters"].items()
    )
    extra = "".join(
        f"<h3>{_e(key.replace('_', ' '))}</h3>{_html_value(key, value)}"
        for key, value in data["extra"].items()
    )
    sections = [
        f'<header><h1>{_e(title)}</h1><p class="lede">{_e(headline(data))}</p>'
        f'<div class="tiles">{tiles_html}</div></header>',
        _section("Funnel", _html_funnel(data["steps"])),
        _section(
            "Removed, by reason",
            _html_table(["reason", "documents", "share"], reasons) if reasons else "<p>Nothing.</p>",
        ),
        _section("Examples", _html_examples(data)),
        _section(
            "Kept, by domain",
            _html_table(["domain", "documents", "bytes", "share of bytes"], domains, (1, 2)),
        ),
        _section("Counters", f'<div class="cards">{counters}</div>' if counters else ""),
        _section("Run", extra),
    ]
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body><main>\n"
        + "\n".join(s for s in sections if s)
        + "\n</main></body></html>\n"
    )
