"""`forge data synth-sft`: instruction conversations derived from the standard library's own code.

The embedded corpus has no conversations, but it holds thousands of documented functions. Every public
module-level function and public method of a public class that has a docstring gives up to two:
- "write": the user asks for the function by its signature and docstring summary; the assistant answers
  with its source (decorators and docstring included, dedented);
- "explain": the user asks what `module.qualname` does; the assistant answers with the docstring, its
  first word turned into a sentence about the signature (`posixpath.join(a, *p)` joins two or more ...).

Design choices:
- prompts are phrased several ways, the phrasing chosen by a hash of the qualified name: varied, yet
  the same on every run;
- imperative summaries ("Return the ...") are conjugated ("... that returns the ...") from a fixed list
  of verbs; a summary that does not start with a known verb is quoted whole, never rewritten;
- skipped files: test suites (unless --include-tests), idlelib (an application), lib2to3 (deprecated
  Python 2 converter), turtledemo (demo scripts), private modules (`_pydecimal`, `_pyio`: copies of
  public ones) and paths that are not module names; a file that does not parse is counted, not fatal;
- validation holds out whole modules, picked in an order given by a seeded hash of their names until
  about --val-fraction of the conversations are held out, so no module's code is on both sides;
- the output directory is written whole (temporary directory + rename); runs are byte-identical.
"""

import ast
import hashlib
import io
import json
import platform
import re
import tokenize
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forge.config import to_dict
from forge.data.sources import folder_units, stdlib_root
from forge.errors import ConfigError, DataError
from forge.io import atomic_dir, write_json

OUTPUTS = ("train.jsonl", "val.jsonl", "report.json")
TEST_DIRS = {"test", "tests", "idle_test"}
SKIPPED_PACKAGES = {"idlelib", "lib2to3", "turtledemo"}
FILE_SKIPS = {
    "test_suite": "test suites: test/, */test/, */tests/ (read them with --include-tests)",
    "skipped_package": "idlelib (the IDLE application), lib2to3 (deprecated), turtledemo (demo scripts)",
    "private_module": "modules whose name has a part starting with '_' (copies or internals)",
    "not_a_module": "paths that are not importable module names",
}
SKIPS = {
    "private": "the function, method or its class starts with '_'",
    "dunder": "special methods and module functions such as __init__, __getattr__",
    "no_docstring": "no docstring",
    "short_summary": "the docstring's first sentence has fewer than --min-doc-words words",
    "unclear_summary": "the first sentence is code, a signature line or ends with ':'",
    "stub_body": "write: nothing but the docstring, pass, ... or raise NotImplementedError",
    "shared_line": "write: the def shares its first line with other code",
    "long_source": "write: the source is longer than --max-answer-chars",
    "long_docstring": "explain: the answer is longer than --max-answer-chars",
}
# Imperative verbs that open stdlib docstrings ("Return ...", "Set ..."), conjugated to "returns", "sets".
VERB_WORDS = """
    accept acquire activate add adjust allow append apply arrange ask assert attach bind block build
    calculate call cancel change check clean clear close combine compare compile compress compute configure
    connect construct convert copy count create debug decide decode decompress define delegate delete
    destroy detect determine disable disassemble discard display divide do draw dump emit enable encode
    ensure enter escape evaluate execute expand extract fail feed fetch fill find finish flush force format
    generate get give guess handle identify import indicate initialize insert install instruct interpret
    invert invoke iterate join keep load lock log look make mark merge modify move normalize obtain open
    override parse pause perform place pop prepare print process produce prompt push put query quote raise
    read receive record register release reload remove rename replace report request reset resolve restore
    resume retrieve return run save scan schedule search seek select send serialize serve set show skip
    sort spawn split start stop store strip take terminate test toggle transform translate truncate try
    turn unbind unlock unmap unregister update upgrade use validate verify wait wake walk wrap write yield
    shift indent collapse rotate pull choose render locate represent begin finalize unlink highlight redo
    undo reinitialize shuffle resize dequeue collect increment declare tell reopen summarize pack map
    remember scroll
"""
VERBS = frozenset(VERB_WORDS.split())
ABBREVIATIONS = {"e.g.", "i.e.", "etc.", "vs.", "cf."}
COORDINATED = re.compile(r"\b(and|or|then) ([a-z]+)\b")  # "... and return ..." → "... and returns ..."
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
Function = ast.FunctionDef | ast.AsyncFunctionDef

WRITE_FUNCTION = (
    "Write a Python function `{sig}` that {clause}",
    "Define a function `{sig}` which {clause}",
    "Implement `{sig}`, a function that {clause}",
    "Implement `{sig}`: {summary}",
)
WRITE_FUNCTION_QUOTED = (
    "Implement `{sig}`: {summary}",
    "Write a Python function `{sig}` as documented: {summary}",
)
WRITE_METHOD = (
    "Write a method `{cls}.{sig}` that {clause}",
    "Define the method `{sig}` of class `{cls}`, which {clause}",
    "Implement `{cls}.{sig}`, a method that {clause}",
    "Implement the method `{cls}.{sig}`: {summary}",
)
WRITE_METHOD_QUOTED = (
    "Implement the method `{cls}.{sig}`: {summary}",
    "Write the method `{cls}.{sig}` as documented: {summary}",
)
EXPLAIN = (
    "What does `{name}` do?",
    "Explain what `{name}` does.",
    "What is `{name}` for?",
    "Describe the {what} `{name}`.",
)


@dataclass(frozen=True, kw_only=True)
class SynthSftConfig:
    """Options of `forge data synth-sft`."""

    out: str = "data/sft"
    """output directory: train.jsonl, val.jsonl, report.json"""
    val_fraction: float = 0.1
    """fraction of conversations held out for validation, whole modules at a time"""
    seed: int = 0
    """seed of the validation modules and of the order of the conversations"""
    max_answer_chars: int = 1500
    """skip answers (a function's source, a docstring) longer than this (small models, short contexts)"""
    min_doc_words: int = 5
    """skip functions whose docstring's first sentence has fewer words"""
    include_tests: bool = False
    """also read the test suites (test/, */test/, */tests/)"""
    system: str = ""
    """system message put first in every conversation (empty: none)"""

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be at least 0 and below 1, got {self.val_fraction}")
        if self.max_answer_chars < 1:
            raise ConfigError(f"--max-answer-chars must be 1 or more, got {self.max_answer_chars}")
        if self.min_doc_words < 0:
            raise ConfigError(f"--min-doc-words must be 0 or more, got {self.min_doc_words}")
        if not self.out:
            raise ConfigError("--out must name a directory, e.g. --out data/sft")


@dataclass(frozen=True)
class Conversation:
    """One derived exchange, with where it came from."""

    kind: str  # "write" or "explain"
    module: str
    qualname: str
    user: str
    assistant: str

    def messages(self, system: str) -> list[dict[str, str]]:
        turns = [{"role": "user", "content": self.user}, {"role": "assistant", "content": self.assistant}]
        return [{"role": "system", "content": system}, *turns] if system else turns


def _hash(text: str) -> int:
    """A stable 64-bit hash (Python's `hash` of a str changes from run to run)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _third_person(verb: str) -> str:
    if verb.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


CONJUGATED = {v: _third_person(v) for v in VERBS} | {_third_person(v): _third_person(v) for v in VERBS}


# ---- files → modules ----------------------------------------------------------------------------------


def module_name(rel: str) -> str:
    """`json/decoder.py` → `json.decoder`; `json/__init__.py` → `json`."""
    parts = rel.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def _file_skip(rel: str, include_tests: bool) -> str | None:
    parts = rel.removesuffix(".py").split("/")
    if not include_tests and TEST_DIRS & set(parts[:-1]):
        return "test_suite"
    if parts[0] in SKIPPED_PACKAGES:
        return "skipped_package"
    if not all(p.isidentifier() for p in parts):
        return "not_a_module"
    if any(p.startswith("_") and p not in ("__init__", "__main__") for p in parts):
        return "private_module"  # _pydecimal, _pyio, __phello__ (a frozen test package) ...
    return None


def _parse(path: Path) -> tuple[ast.Module, list[str]]:
    """The tree and the lines of a source file, decoded as Python decodes it (coding cookie, BOM)."""
    data = path.read_bytes()
    encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    text = data.decode(encoding).replace("\r\n", "\n").replace("\r", "\n")
    with warnings.catch_warnings():  # invalid escape sequences in old code are not our concern
        warnings.simplefilter("ignore")
        tree = ast.parse(text, filename=str(path))
    return tree, text.split("\n")


def _functions(tree: ast.Module) -> Iterator[tuple[str, Function]]:
    """(class name or "", function) for module-level functions and methods of module-level classes."""
    for statement in tree.body:
        if isinstance(statement, FUNCTIONS):
            yield "", statement
        elif isinstance(statement, ast.ClassDef):
            for item in statement.body:
                if isinstance(item, FUNCTIONS):
                    yield statement.name, item


# ---- one function → conversations --------------------------------------------------------------------


def _sentence_end(text: str) -> int:
    """Where the first sentence of `text`'s first paragraph ends."""
    paragraph = re.split(r"\n\s*\n", text, maxsplit=1)[0]
    for end in re.finditer(r"[.!?](?=\s|$)", paragraph):
        if paragraph[: end.end()].rsplit(maxsplit=1)[-1].lower() not in ABBREVIATIONS:
            return end.end()
    return len(paragraph)


def summary_of(docstring: str) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    return " ".join(docstring[: _sentence_end(docstring)].split())


def _verb(word: str, first: bool) -> str | None:
    """`word` in the third person if it is a known verb, in lower case (or capitalised at the start)."""
    plain = word.islower() or (first and word[:1].isupper() and word[1:].islower())
    return CONJUGATED.get(word.lower()) if plain else None


def in_third_person(sentence: str) -> str | None:
    """An imperative sentence as a predicate: "Read the file and return its size." → "reads the file and
    returns its size."; "Recursively remove x" → "recursively removes x". None when it does not open with
    a known verb."""
    word = re.match(r"[A-Za-z]+\b", sentence)
    adverb = re.match(r"([A-Z][a-z]+ly)\s+([a-z]+)\b", sentence)  # "Recursively remove"
    if word and _verb(word[0], first=True):
        head, end = _verb(word[0], first=True), word.end()
    elif adverb and _verb(adverb[2], first=False):
        head, end = f"{adverb[1].lower()} {_verb(adverb[2], first=False)}", adverb.end()
    else:
        return None
    rest = COORDINATED.sub(lambda m: f"{m[1]} {CONJUGATED[m[2]]}" if m[2] in VERBS else m[0], sentence[end:])
    return f"{head}{rest}"


def _signature(node: Function, is_method: bool) -> str:
    """`name(args)` as written, without the `self`/`cls` of a method."""
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in node.decorator_list)
    if is_method and not static and positional:
        kept = len(positional) - 1
        args = ast.arguments(
            posonlyargs=args.posonlyargs[1:],
            args=args.args[1:] if not args.posonlyargs else args.args,
            vararg=args.vararg,
            kwonlyargs=args.kwonlyargs,
            kw_defaults=args.kw_defaults,
            kwarg=args.kwarg,
            defaults=args.defaults[len(args.defaults) - kept :] if kept else [],
        )
    return f"{node.name}({ast.unparse(args)})"


def _source(node: Function, lines: list[str]) -> str | None:
    """The function's source with its decorators, its indentation removed; None when the def shares
    its first line with other code."""
    start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    first = lines[start - 1]
    code = first.lstrip()
    if not code.startswith(("@", "def ", "async ")):
        return None
    indent = first[: len(first) - len(code)]
    body = lines[start - 1 : node.end_lineno]
    # strip the def's own indentation only: lines of a string literal written further left stay as they are
    return "\n".join(line.removeprefix(indent) for line in body).rstrip()


def _is_stub(node: Function) -> bool:
    def empty(statement: ast.stmt) -> bool:
        if isinstance(statement, ast.Pass):
            return True
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            return True  # the docstring, or `...`
        if isinstance(statement, ast.Raise) and statement.exc is not None:
            exc = statement.exc.func if isinstance(statement.exc, ast.Call) else statement.exc
            return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"
        return False

    return all(empty(s) for s in node.body)


def _sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."


def _skip(class_name: str, name: str, docstring: str, min_doc_words: int) -> str | None:
    """Why a function gives no conversation at all; None when it gives some."""
    if name.startswith("__") and name.endswith("__"):
        return "dunder"
    if name.startswith("_") or class_name.startswith("_"):
        return "private"
    if not docstring:
        return "no_docstring"
    summary = summary_of(docstring)
    if len(summary.split()) < min_doc_words:
        return "short_summary"
    if not summary[:1].isalpha() or "(" in summary.split(" ", 1)[0] or "->" in summary or summary[-1] == ":":
        return "unclear_summary"  # ">>> f(1)", "D.keys() -> a set-like object", "Return a tuple of:"
    return None


def _write_request(module: str, qualname: str, sig: str, summary: str) -> str:
    """The user's request for the function, phrased one of several ways chosen by its name."""
    predicate = in_third_person(summary)
    class_name = qualname.rpartition(".")[0]
    if class_name:
        templates = WRITE_METHOD if predicate else WRITE_METHOD_QUOTED
    else:
        templates = WRITE_FUNCTION if predicate else WRITE_FUNCTION_QUOTED
    template = templates[_hash(f"write:{module}.{qualname}") % len(templates)]
    clause = predicate.removesuffix(".") if predicate else ""
    return _sentence(template.format(sig=sig, cls=class_name, clause=clause, summary=_sentence(summary)))


def derive(
    module: str, class_name: str, node: Function, lines: list[str], config: SynthSftConfig, skipped: Counter
) -> list[Conversation]:
    """The conversations one function gives; reasons for what it does not give are counted in `skipped`."""
    docstring = (ast.get_docstring(node, clean=True) or "").rstrip()  # cleandoc can leave a blank line
    reason = _skip(class_name, node.name, docstring, config.min_doc_words)
    if reason:
        skipped[reason] += 1
        return []
    qualname = f"{class_name}.{node.name}" if class_name else node.name
    sig = _signature(node, is_method=bool(class_name))
    found = []

    source = _source(node, lines)
    if source is None:
        skipped["shared_line"] += 1
    elif _is_stub(node):
        skipped["stub_body"] += 1
    elif len(source) > config.max_answer_chars:
        skipped["long_source"] += 1
    else:
        request = _write_request(module, qualname, sig, summary_of(docstring))
        found.append(Conversation("write", module, qualname, request, source))

    # "Return the ..." → "`mod.f(x)` returns the ...", the rest of the docstring as written
    full = f"{module}.{class_name}.{sig}" if class_name else f"{module}.{sig}"
    end = _sentence_end(docstring)
    opening = in_third_person(docstring[:end])
    answer = f"`{full}` {opening}{docstring[end:]}" if opening else f"`{full}`: {docstring}"
    if len(answer) > config.max_answer_chars:
        skipped["long_docstring"] += 1
    else:
        template = EXPLAIN[_hash(f"explain:{module}.{qualname}") % len(EXPLAIN)]
        question = template.format(name=f"{module}.{qualname}", what="method" if class_name else "function")
        found.append(Conversation("explain", module, qualname, question, answer))
    return found


# ---- the tree → train/val ---------------------------------------------------------------------------


def _read_tree(root: Path, config: SynthSftConfig, report: dict[str, Any]) -> list[Conversation]:
    """Every conversation of the tree: modules in sorted order, functions in source order."""
    files_skipped: Counter[str] = Counter()
    paths: dict[str, Path] = {}
    for unit in folder_units(root, include=("*.py",), exclude=()):
        rel = Path(unit.path).relative_to(root).as_posix()
        reason = _file_skip(rel, config.include_tests)
        if reason:
            files_skipped[reason] += 1
        else:
            paths[module_name(rel)] = Path(unit.path)
    skipped: Counter[str] = Counter()
    failures: list[dict[str, str]] = []
    conversations: list[Conversation] = []
    functions = 0
    for module in sorted(paths):
        try:
            tree, lines = _parse(paths[module])
        except (OSError, SyntaxError, UnicodeDecodeError, LookupError, ValueError, RecursionError) as e:
            failures.append({"file": str(paths[module]), "error": f"{type(e).__name__}: {e}"})
            continue
        for class_name, node in _functions(tree):
            functions += 1
            conversations += derive(module, class_name, node, lines, config, skipped)
    report |= {
        "files_read": len(paths),
        "files_skipped": dict(sorted(files_skipped.items())),
        "parse_failures": len(failures),
        "parse_failure_examples": failures[:10],
        "functions_seen": functions,
        "skipped": {reason: skipped[reason] for reason in SKIPS if skipped[reason]},
    }
    return conversations


def deduplicate(conversations: list[Conversation]) -> tuple[list[Conversation], Counter[str]]:
    """Drop repeated (user, assistant) pairs, then repeated answers; the first one is kept."""
    pairs: set[tuple[str, str]] = set()
    answers: set[str] = set()
    kept: list[Conversation] = []
    removed: Counter[str] = Counter()
    for c in conversations:
        if (c.user, c.assistant) in pairs:
            removed["same_conversation"] += 1
        elif c.assistant in answers:
            removed["same_answer"] += 1
        else:
            pairs.add((c.user, c.assistant))
            answers.add(c.assistant)
            kept.append(c)
    return kept, removed


def validation_modules(counts: Counter[str], val_fraction: float, seed: int) -> list[str]:
    """Modules to hold out, taken in seeded-hash order whenever one brings the held-out share of
    conversations closer to `val_fraction`; at least one module stays for training."""
    total = sum(counts.values())
    target = val_fraction * total
    held: list[str] = []
    size = 0
    for module in sorted(counts, key=lambda m: (_hash(f"{seed}:{m}"), m)):
        n = counts[module]
        if abs(size + n - target) < abs(size - target) and size + n < total:
            held.append(module)
            size += n
    return sorted(held)


def _shuffled(conversations: list[Conversation], seed: int) -> list[Conversation]:
    """A seeded, content-defined order, so kinds and modules interleave and runs agree."""
    return sorted(conversations, key=lambda c: (_hash(f"{seed}:{c.kind}:{c.module}.{c.qualname}"), c.user))


def _split_report(conversations: list[Conversation]) -> dict[str, Any]:
    kinds = Counter(c.kind for c in conversations)
    return {
        "conversations": len(conversations),
        "write": kinds["write"],
        "explain": kinds["explain"],
        "modules": len({c.module for c in conversations}),
    }


def _write_jsonl(path: Path, conversations: list[Conversation], system: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for c in conversations:
            f.write(json.dumps({"messages": c.messages(system)}, ensure_ascii=False) + "\n")


def synthesize(config: SynthSftConfig, root: Path | None = None) -> dict[str, Any]:
    """Derive conversations from the Python sources below `root` (default: this Python's standard
    library) and write train.jsonl, val.jsonl and report.json into `config.out`; return the report."""
    root = Path(root) if root is not None else stdlib_root()
    if not root.is_dir():
        raise DataError(f"{root} is not a directory; give the root of a tree of Python modules")
    out = Path(config.out)
    if out.exists() and (not out.is_dir() or any(p.name not in OUTPUTS for p in out.iterdir())):
        raise ConfigError(
            f"--out {out} exists and holds files `forge data synth-sft` did not write; "
            "choose a new directory (it would be replaced)"
        )
    report: dict[str, Any] = {
        "root": str(root),
        "python": platform.python_version(),
        "config": to_dict(config),
    }
    found = _read_tree(root, config, report)
    conversations, removed = deduplicate(found)
    if not conversations:
        raise DataError(
            f"{root}: no conversations derived ({report['files_read']} modules read, "
            f"{report['functions_seen']} functions seen, skipped: {report['skipped']}); "
            "give a tree of Python modules with documented public functions"
        )
    held = validation_modules(Counter(c.module for c in conversations), config.val_fraction, config.seed)
    ordered = _shuffled(conversations, config.seed)
    val_modules = set(held)
    val = [c for c in ordered if c.module in val_modules]
    train = [c for c in ordered if c.module not in val_modules]
    kinds = Counter(c.kind for c in conversations)
    report |= {
        "duplicates_removed": {k: removed[k] for k in ("same_conversation", "same_answer")},
        "conversations": {"write": kinds["write"], "explain": kinds["explain"]},
        "train": _split_report(train),
        "val": _split_report(val),
        "validation_modules": held,
        "examples": {
            kind: [
                {"module": c.module, "messages": c.messages(config.system)} for c in ordered if c.kind == kind
            ][:3]
            for kind in ("write", "explain")
        },
        "meanings": FILE_SKIPS | SKIPS,
    }
    with atomic_dir(out) as tmp:
        _write_jsonl(tmp / "train.jsonl", train, config.system)
        _write_jsonl(tmp / "val.jsonl", val, config.system)
        write_json(tmp / "report.json", report)
    return report
