"""What the data stage kept and removed, and why: `report.json` for programs, `report.md` and
`report.html` for people.

The stage runs as named steps (read, decode, …, write), each in several worker tasks; every task fills a
`Report` and the reports are merged. A step records documents and bytes in and out, seconds (summed over
workers: worker time, not wall clock), removals per reason and documents changed but kept. Every removal
is also counted under its reason with the first few examples (where, a detail such as the document it
duplicates, an excerpt of the text), so a surprising number can be traced back to files.

`report.json` is `Report.to_dict()` with the caller's `extra` (a contract, read by `forge data inspect`):

    documents_seen     documents read
    kept, removed      documents kept; removals counted by `remove`
    bytes_seen         the first step's bytes_in (0 without steps)
    bytes_kept         the last step's bytes_out (0 without steps)
    steps              [{name, docs_in, bytes_in, docs_out, bytes_out, seconds, removed: {reason: n},
                         changed}] in the order the steps were first recorded
    kept_by_domain     {domain: {documents, chars, bytes}}, most documents first
    removed_by_reason  {reason: n}, most common first
    examples           {reason: [{where, detail, excerpt}]}
    counters           {group: {kind: n}}, e.g. {"pii": {"email": 3}, "lines_removed": {"c4": 12}}
    meanings           {reason: one-line meaning}: REASONS plus what `describe` added
    extra              {inputs, config, near_duplicate_pairs, domain_mix, …} as given to `write`

The pages are rendered by `forge.data.report_pages`.
"""

from collections import Counter, defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from forge.data.report_pages import to_html, to_markdown
from forge.io import write_json, write_text

# what each reason means, for the human report; `Report.describe` adds the reasons of other filters
REASONS = {
    "undecodable": "bytes are not valid UTF-8",
    "binary": "NUL bytes or too many control characters",
    "too_short": "shorter than --min-chars after normalisation",
    "too_long": "longer than --max-chars after normalisation",
    "exact_duplicate": "same normalised text as an earlier document",
    "near_duplicate": "nearly the same text as a kept document (MinHash similarity above the threshold)",
    "unreadable_file": "the file could not be read (input problem)",
    "malformed_jsonl": "a JSONL line that is not valid JSON (input problem)",
    "missing_text_field": "a record without the text field (input problem)",
}

_STEP_COUNTS = ("docs_in", "bytes_in", "docs_out", "bytes_out", "changed")


class Report:
    """Per-step funnel, removals per reason with examples, kept documents per domain and free counters."""

    def __init__(self, max_examples: int = 5, excerpt_chars: int = 400) -> None:
        self.max_examples, self.excerpt_chars = max_examples, excerpt_chars
        self.seen = 0
        self.steps: dict[str, dict[str, Any]] = {}
        self.kept: Counter[str] = Counter()  # documents per domain
        self.kept_chars: Counter[str] = Counter()
        self.kept_bytes: Counter[str] = Counter()
        self.removed: Counter[str] = Counter()
        self.examples: defaultdict[str, list[dict[str, str]]] = defaultdict(list)
        self.counters: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.meanings: dict[str, str] = dict(REASONS)
        self.extra: dict[str, Any] = {}

    def step(
        self,
        name: str,
        *,
        docs_in: int,
        bytes_in: int,
        docs_out: int,
        bytes_out: int,
        seconds: float = 0.0,
        removed: Mapping[str, int] | None = None,
        changed: int = 0,
    ) -> None:
        """Add to the counts of step `name`; its first call fixes its place in the funnel."""
        if name not in self.steps:
            self.steps[name] = {key: 0 for key in _STEP_COUNTS} | {"seconds": 0.0, "removed": Counter()}
        entry = self.steps[name]
        for key, value in zip(_STEP_COUNTS, (docs_in, bytes_in, docs_out, bytes_out, changed), strict=True):
            entry[key] += value
        entry["seconds"] += seconds
        entry["removed"].update(removed or {})

    def remove(self, reason: str, where: str, detail: str = "", text: str = "") -> None:
        """Count one removal; keep the first `max_examples` per reason with an excerpt of `text`."""
        self.removed[reason] += 1
        if len(self.examples[reason]) < self.max_examples:
            excerpt = text[: self.excerpt_chars] + ("…" if len(text) > self.excerpt_chars else "")
            self.examples[reason].append({"where": where, "detail": detail, "excerpt": excerpt})

    def keep(self, domain: str, chars: int, nbytes: int) -> None:
        """Count one kept document of `domain`."""
        self.kept[domain] += 1
        self.kept_chars[domain] += chars
        self.kept_bytes[domain] += nbytes

    def count(self, group: str, kind: str, n: int = 1) -> None:
        """Add `n` to a free counter, e.g. `count("pii", "email", 3)`."""
        self.counters[group][kind] += n

    def describe(self, meanings: Mapping[str, str]) -> None:
        """Add reasons to the glossary: reason → one-line meaning."""
        self.meanings.update(meanings)

    def merge(self, other: "Report") -> None:
        """Add `other` into this report (examples are appended up to `max_examples` per reason)."""
        self.seen += other.seen
        for name, entry in other.steps.items():
            counts = {key: entry[key] for key in _STEP_COUNTS}
            self.step(name, **counts, seconds=entry["seconds"], removed=entry["removed"])
        self.kept.update(other.kept)
        self.kept_chars.update(other.kept_chars)
        self.kept_bytes.update(other.kept_bytes)
        self.removed.update(other.removed)
        for reason, examples in other.examples.items():
            room = self.max_examples - len(self.examples[reason])
            self.examples[reason] += examples[: max(room, 0)]
        for group, kinds in other.counters.items():
            self.counters[group].update(kinds)
        self.meanings.update(other.meanings)
        self.extra.update(other.extra)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able data (the `report.json` contract in the module docstring)."""
        steps = [
            {"name": name}
            | {key: entry[key] for key in ("docs_in", "bytes_in", "docs_out", "bytes_out", "seconds")}
            | {"removed": dict(entry["removed"].most_common()), "changed": entry["changed"]}
            for name, entry in self.steps.items()
        ]
        order = [r for r, _ in self.removed.most_common()] + [
            r for r in self.examples if r not in self.removed
        ]
        return {
            "documents_seen": self.seen,
            "kept": sum(self.kept.values()),
            "removed": sum(self.removed.values()),
            "bytes_seen": steps[0]["bytes_in"] if steps else 0,
            "bytes_kept": steps[-1]["bytes_out"] if steps else 0,
            "steps": steps,
            "kept_by_domain": {
                domain: {"documents": n, "chars": self.kept_chars[domain], "bytes": self.kept_bytes[domain]}
                for domain, n in self.kept.most_common()
            },
            "removed_by_reason": dict(self.removed.most_common()),
            "examples": {r: list(self.examples[r]) for r in order if self.examples.get(r)},
            "counters": {group: dict(kinds.most_common()) for group, kinds in self.counters.items()},
            "meanings": dict(self.meanings),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Report":
        """A report from `to_dict()` output, e.g. a `report.json` read back."""
        report = cls()
        report.seen = data["documents_seen"]
        for entry in data["steps"]:
            counts = {key: entry[key] for key in _STEP_COUNTS}
            report.step(entry["name"], **counts, seconds=entry["seconds"], removed=entry["removed"])
        for domain, row in data["kept_by_domain"].items():
            report.kept[domain] = row["documents"]
            report.kept_chars[domain] = row["chars"]
            report.kept_bytes[domain] = row["bytes"]
        report.removed.update(data["removed_by_reason"])
        for reason, examples in data["examples"].items():
            report.examples[reason] = [dict(example) for example in examples]
        for group, kinds in data["counters"].items():
            report.counters[group].update(kinds)
        report.meanings = dict(data["meanings"])
        report.extra = dict(data.get("extra", {}))
        return report

    def write(
        self, directory: Path, title: str = "Data preparation report", extra: Mapping[str, Any] | None = None
    ) -> None:
        """Write report.json, report.md and report.html into `directory`, each atomically."""
        data = self.to_dict()
        data["extra"].update(extra or {})
        write_json(Path(directory) / "report.json", data)
        write_text(Path(directory) / "report.md", to_markdown(data, title))
        write_text(Path(directory) / "report.html", to_html(data, title))
