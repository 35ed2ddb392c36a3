"""Where documents come from: folders of text and code, JSONL, Parquet, and the embedded default.

Every reader yields `RawDocument`s in a deterministic order (folders are walked sorted), each carrying
its bytes or text, where it came from (`path` or `path:line`) and a domain tag. Readers never decode or
clean: `forge.data.clean` decides what is corrupted, so every removal is counted in one place. Problems
with the input itself (a missing path, an unreadable file, a malformed JSONL line) are handed to
`on_problem(reason, where, detail)` and reading goes on; nothing is dropped silently.

The embedded default is the running interpreter's standard library: its `*.py` files (domain `code`,
`site-packages` and caches excluded) and the `pydoc_data.topics` help texts (domain `docs`).
"""

import fnmatch
import gzip
import json
import os
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from forge.errors import DataError

OnProblem = Callable[[str, str, str], None]

CODE_EXTENSIONS = (
    ".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".rs", ".go", ".java", ".js", ".ts", ".sh", ".rb",
    ".lua", ".sql", ".toml", ".yaml", ".yml", ".cfg", ".ini",
)  # fmt: skip
TEXT_EXTENSIONS = (".txt", ".md", ".rst", ".tex", ".html", ".org")
DEFAULT_EXCLUDE = (
    "**/.git/**",
    "**/__pycache__/**",
    "**/node_modules/**",
    "**/.venv/**",
    "**/site-packages/**",
)


@dataclass(frozen=True)
class RawDocument:
    """One document as read: `data` is bytes (files) or str (JSONL/Parquet fields, the help topics)."""

    id: str
    data: bytes | str
    source: str
    domain: str


def domain_of(path: Path) -> str:
    """`code` for source files, `docs` for prose, by extension."""
    return "code" if path.suffix.lower() in CODE_EXTENSIONS else "docs"


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    # fnmatch's "*" crosses "/"; a leading "**/" must also match at the top of the tree
    return any(
        fnmatch.fnmatch(rel, p) or (p.startswith("**/") and fnmatch.fnmatch(rel, p[3:])) for p in patterns
    )


@dataclass(frozen=True)
class InputUnit:
    """The smallest piece of input read as a whole by one task: a file (of a folder, or given alone), a
    JSONL or Parquet file, or the pydoc help topics. `size` is its size in bytes, for balancing tasks."""

    kind: str  # "file", "jsonl", "parquet" or "topics"
    path: str
    id: str = ""  # a file's document id ("folder/relative/path")
    size: int = 0


def folder_units(root: Path, *, include: Sequence[str], exclude: Sequence[str]) -> list[InputUnit]:
    """Files below `root` matching an `include` glob (default: known text/code extensions), sorted."""
    extensions = CODE_EXTENSIONS + TEXT_EXTENSIONS
    units = []
    for path in sorted(_walk(root)):
        rel = path.relative_to(root).as_posix()
        if _matches(rel, (*DEFAULT_EXCLUDE, *exclude)):
            continue
        wanted = _matches(rel, include) if include else path.suffix.lower() in extensions
        if wanted:
            units.append(InputUnit("file", str(path), f"{root.name}/{rel}", _size(path)))
    return units


_SKIPPED_DIRS = {".git", "__pycache__", "node_modules", ".venv", "site-packages"}  # DEFAULT_EXCLUDE's


def _walk(root: Path) -> Iterator[Path]:
    """Every file below `root`, never descending into the always-skipped directories."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS]
        for name in files:
            path = Path(folder, name)
            if path.is_file():
                yield path


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # reported when the task reads it


def _read_file(unit: InputUnit, on_problem: OnProblem) -> Iterator[RawDocument]:
    path = Path(unit.path)
    try:
        data = path.read_bytes()
    except OSError as e:
        on_problem("unreadable_file", str(path), e.strerror or str(e))
        return
    yield RawDocument(id=unit.id or path.name, data=data, source=str(path), domain=domain_of(path))


def iter_folder(
    root: Path, *, include: Sequence[str], exclude: Sequence[str], on_problem: OnProblem
) -> Iterator[RawDocument]:
    """The documents of `folder_units`, in order."""
    for unit in folder_units(root, include=include, exclude=exclude):
        yield from _read_file(unit, on_problem)


def iter_jsonl(
    path: Path, *, text_field: str, domain_field: str, default_domain: str, on_problem: OnProblem
) -> Iterator[RawDocument]:
    """One document per line of a JSON Lines file (`.jsonl` or `.jsonl.gz`); bad lines are reported."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                where = f"{path}:{number}"
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    on_problem("malformed_jsonl", where, f"not valid JSON ({e})")
                    continue
                if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                    on_problem(
                        "missing_text_field", where, f"no string field {text_field!r} (see --text-field)"
                    )
                    continue
                domain = record.get(domain_field)
                yield RawDocument(
                    id=str(record.get("id", f"{path.name}:{number}")),
                    data=record[text_field],
                    source=where,
                    domain=domain if isinstance(domain, str) and domain else default_domain,
                )
    except (OSError, EOFError) as e:  # unreadable, or a truncated .gz
        on_problem("unreadable_file", str(path), str(e))


def iter_parquet(
    path: Path, *, text_field: str, domain_field: str, default_domain: str, on_problem: OnProblem
) -> Iterator[RawDocument]:
    """One document per row of a Parquet file, streamed in record batches."""
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        on_problem("unreadable_file", str(path), f"not a Parquet file ({e})")
        return
    names = parquet.schema_arrow.names
    if text_field not in names:
        on_problem(
            "missing_text_field", str(path), f"no column {text_field!r} (columns: {names}; see --text-field)"
        )
        return
    columns = [c for c in (text_field, domain_field, "id") if c in names]
    row = 0
    for batch in parquet.iter_batches(batch_size=1024, columns=columns):
        data = batch.to_pydict()
        for i, text in enumerate(data[text_field]):
            row += 1
            where = f"{path}:row {row}"
            if not isinstance(text, str):
                on_problem("missing_text_field", where, f"{text_field!r} is {type(text).__name__}, not text")
                continue
            domain = data.get(domain_field, [None] * (i + 1))[i]
            ident = data.get("id", [None] * (i + 1))[i]
            yield RawDocument(
                id=str(ident if ident is not None else f"{path.name}:{row}"),
                data=text,
                source=where,
                domain=domain if isinstance(domain, str) and domain else default_domain,
            )


def stdlib_root() -> Path:
    """The standard library directory of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_units() -> list[InputUnit]:
    """The embedded default corpus: the standard library's `*.py` files, then the pydoc help topics."""
    units = folder_units(stdlib_root(), include=("*.py",), exclude=())
    return [*units, InputUnit("topics", "pydoc_data.topics", size=3_000_000)]


def _iter_topics() -> Iterator[RawDocument]:
    from pydoc_data.topics import topics  # ships with CPython: the text of `help("topic")`

    for name in sorted(topics):
        yield RawDocument(
            id=f"pydoc_data/{name}", data=topics[name], source=f"pydoc_data.topics[{name!r}]", domain="docs"
        )


def iter_stdlib(on_problem: OnProblem) -> Iterator[RawDocument]:
    """The documents of the embedded default corpus (`stdlib_units`), in order."""
    for unit in stdlib_units():
        yield from iter_unit(unit, on_problem=on_problem)


def check_inputs(inputs: Sequence[str]) -> None:
    """Raise a DataError naming the first input path that does not exist."""
    for given in inputs:
        if not Path(given).exists():
            raise DataError(
                f"input {given} does not exist; pass folders, .jsonl or .parquet files "
                "(or nothing, for the standard library corpus)"
            )


def plan_units(
    inputs: Sequence[str], *, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[InputUnit]:
    """Every input unit in reading order: folders file by file, `.jsonl[.gz]`, `.parquet`, other files;
    no inputs → the standard library."""
    check_inputs(inputs)
    if not inputs:
        return stdlib_units()
    units: list[InputUnit] = []
    for given in inputs:
        path = Path(given)
        name = path.name.lower()
        if path.is_dir():
            units += folder_units(path, include=include, exclude=exclude)
        elif name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
            units.append(InputUnit("jsonl", str(path), size=_size(path)))
        elif name.endswith(".parquet"):
            units.append(InputUnit("parquet", str(path), size=_size(path)))
        else:
            units.append(InputUnit("file", str(path), path.name, _size(path)))
    return units


def iter_unit(
    unit: InputUnit, *, text_field: str = "text", domain_field: str = "domain", on_problem: OnProblem
) -> Iterator[RawDocument]:
    """The documents of one input unit, in order."""
    path = Path(unit.path)
    default_domain = path.name.split(".")[0]
    if unit.kind == "file":
        yield from _read_file(unit, on_problem)
    elif unit.kind == "topics":
        yield from _iter_topics()
    elif unit.kind == "jsonl":
        yield from iter_jsonl(
            path,
            text_field=text_field,
            domain_field=domain_field,
            default_domain=default_domain,
            on_problem=on_problem,
        )
    else:
        yield from iter_parquet(
            path,
            text_field=text_field,
            domain_field=domain_field,
            default_domain=default_domain,
            on_problem=on_problem,
        )


def iter_inputs(
    inputs: Sequence[str],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    text_field: str = "text",
    domain_field: str = "domain",
    on_problem: OnProblem,
) -> Iterator[RawDocument]:
    """Documents of every input in order (`plan_units`, then `iter_unit`)."""
    for unit in plan_units(inputs, include=include, exclude=exclude):
        yield from iter_unit(unit, text_field=text_field, domain_field=domain_field, on_problem=on_problem)
