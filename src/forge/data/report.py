"""What the data stage kept and removed, and why: `report.json` for programs, `report.md` for people.

Every removal and every input problem is counted under a reason name, with the first few examples
(where it was, and a detail such as the document it duplicates), so a surprising number can be traced
back to files. Kept documents are counted per domain, with their characters.
"""

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from forge.io import write_json, write_text

# what each reason means, for the human report (reasons not listed are shown by name alone)
REASONS = {
    "undecodable": "bytes are not valid UTF-8",
    "binary": "NUL bytes or too many control characters",
    "too_short": "shorter than --min-chars after normalisation",
    "too_long": "longer than --max-chars after normalisation",
    "exact_duplicate": "same normalised text as an earlier document",
    "unreadable_file": "the file could not be read (input problem)",
    "malformed_jsonl": "a JSONL line that is not valid JSON (input problem)",
    "missing_text_field": "a record without the text field (input problem)",
}


class Report:
    """Counts of kept documents per domain and of removals per reason, with examples."""

    def __init__(self, max_examples: int = 5) -> None:
        self.max_examples = max_examples
        self.seen = 0
        self.kept: Counter[str] = Counter()
        self.kept_chars: Counter[str] = Counter()
        self.removed: Counter[str] = Counter()
        self.examples: defaultdict[str, list[dict[str, str]]] = defaultdict(list)

    def keep(self, domain: str, chars: int) -> None:
        self.kept[domain] += 1
        self.kept_chars[domain] += chars

    def remove(self, reason: str, where: str, detail: str = "") -> None:
        self.removed[reason] += 1
        if len(self.examples[reason]) < self.max_examples:
            self.examples[reason].append({"where": where, "detail": detail})

    def to_dict(self) -> dict[str, Any]:
        return {
            "documents_seen": self.seen,
            "kept": sum(self.kept.values()),
            "removed": sum(self.removed.values()),
            "kept_by_domain": {
                d: {"documents": n, "chars": self.kept_chars[d]} for d, n in sorted(self.kept.items())
            },
            "removed_by_reason": dict(self.removed.most_common()),
            "examples": {reason: self.examples[reason] for reason, _ in self.removed.most_common()},
        }

    def write(self, directory: Path) -> None:
        """Write report.json and report.md into `directory`."""
        data = self.to_dict()
        write_json(directory / "report.json", data)
        write_text(directory / "report.md", to_markdown(data))


def to_markdown(data: dict[str, Any]) -> str:
    """The report as a Markdown page."""
    lines = [
        "# Data preparation report",
        "",
        f"{data['documents_seen']:,} documents read: **{data['kept']:,} kept**, {data['removed']:,} removed "
        "or skipped.",
        "",
        "## Kept, by domain",
        "",
        "| domain | documents | characters |",
        "|---|---:|---:|",
    ]
    for domain, row in data["kept_by_domain"].items():
        lines.append(f"| {domain} | {row['documents']:,} | {row['chars']:,} |")
    lines += ["", "## Removed, by reason", ""]
    if not data["removed_by_reason"]:
        lines.append("Nothing was removed.")
    else:
        lines += ["| reason | count | meaning |", "|---|---:|---|"]
        for reason, count in data["removed_by_reason"].items():
            lines.append(f"| `{reason}` | {count:,} | {REASONS.get(reason, '')} |")
        lines += ["", "## Examples", ""]
        for reason, examples in data["examples"].items():
            lines.append(f"- `{reason}`")
            for example in examples:
                detail = f": {example['detail']}" if example["detail"] else ""
                lines.append(f"  - `{example['where']}`{detail}")
    return "\n".join(lines) + "\n"
