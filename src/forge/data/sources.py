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


def iter_folder(
    root: Path, *, include: Sequence[str], exclude: Sequence[str], on_problem: OnProblem
) -> Iterator[RawDocument]:
    """Files below `root` matching an `include` glob (default: known text/code extensions), sorted."""
    extensions = CODE_EXTENSIONS + TEXT_EXTENSIONS
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if _matches(rel, (*DEFAULT_EXCLUDE, *exclude)):
            continue
        wanted = _matches(rel, include) if include else path.suffix.lower() in extensions
        if not wanted:
            continue
        try:
            data = path.read_bytes()
        except OSError as e:
            on_problem("unreadable_file", str(path), e.strerror or str(e))
            continue
        yield RawDocument(id=f"{root.name}/{rel}", data=data, source=str(path), domain=domain_of(path))


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


def iter_stdlib(on_problem: OnProblem) -> Iterator[RawDocument]:
    """The embedded default corpus: the standard library's `*.py` files, then the pydoc help topics."""
    root = stdlib_root()
    yield from iter_folder(root, include=("*.py",), exclude=(), on_problem=on_problem)
    from pydoc_data.topics import topics  # ships with CPython: the text of `help("topic")`

    for name in sorted(topics):
        yield RawDocument(
            id=f"pydoc_data/{name}", data=topics[name], source=f"pydoc_data.topics[{name!r}]", domain="docs"
        )


def check_inputs(inputs: Sequence[str]) -> None:
    """Raise a DataError naming the first input path that does not exist."""
    for given in inputs:
        if not Path(given).exists():
            raise DataError(
                f"input {given} does not exist; pass folders, .jsonl or .parquet files "
                "(or nothing, for the standard library corpus)"
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
    """Documents of every input in order: folders, `.jsonl[.gz]`, `.parquet`; none → the stdlib."""
    check_inputs(inputs)
    if not inputs:
        yield from iter_stdlib(on_problem)
        return
    for given in inputs:
        path = Path(given)
        name = path.name.lower()
        if path.is_dir():
            yield from iter_folder(path, include=include, exclude=exclude, on_problem=on_problem)
        elif name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
            yield from iter_jsonl(
                path,
                text_field=text_field,
                domain_field=domain_field,
                default_domain=path.name.split(".")[0],
                on_problem=on_problem,
            )
        elif name.endswith(".parquet"):
            yield from iter_parquet(
                path,
                text_field=text_field,
                domain_field=domain_field,
                default_domain=path.name.split(".")[0],
                on_problem=on_problem,
            )
        elif path.is_file():
            try:
                data = path.read_bytes()
            except OSError as e:
                on_problem("unreadable_file", str(path), e.strerror or str(e))
                continue
            yield RawDocument(id=path.name, data=data, source=str(path), domain=domain_of(path))
