"""A rule anyone can read that stands in for human judgements when nobody labels: `judge` one answer,
`prefer` one of two.

It is written for the instruction set of `forge data synth-sft`, whose prompts ask either to write a
function ("Write a Python function `name(args)` that ...", "Implement the method `Class.name(args)`: ...")
or to explain one ("What does `module.name` do?", "Describe the function `module.name`."). An answer
passes when every check of its prompt's kind holds:

- write: the generation ended by itself (end-of-turn, not the token limit); it is not empty; it parses
  as Python (`ast.parse`, after removing a ``` fence if there is one); it defines a function or method
  with the name the prompt asks for; it does not repeat itself;
- explain: it ended by itself; it is not empty; it names what was asked (the last part of the dotted
  name); it does not repeat itself;
- any other prompt: it ended by itself; it is not empty; it does not repeat itself.

"Repeats itself": a line of 16 characters or more appears more than 4 times, or more than 35% of its
6-grams (runs of six words or punctuation marks) repeat an earlier one (`MIN_REPEATED_LINE_CHARS`,
`MAX_LINE_REPEATS`, `NGRAM`, `MAX_REPEATED_NGRAM_FRACTION`).

The score is the fraction of checks that hold. `prefer` takes an answer that passes over one that fails,
and between two that fail the one with the higher score; otherwise (both pass, or equal scores) the rule
cannot tell them apart and says None.

This is a stand-in: it checks the form of an answer, not whether the code is correct or the explanation
true. Pairs it separates are synthetic preferences, not human ones; `forge label serve` collects the real
thing.
"""

import ast
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Messages = Sequence[dict[str, str]]
Kind = Literal["write", "explain", "other"]

# calibrated on the 6,185 reference answers `forge data synth-sft` derives from Python 3.11's standard
# library: all but one pass (a function that really does `return plainpager` five times)
MAX_LINE_REPEATS = 4
MIN_REPEATED_LINE_CHARS = 16
NGRAM = 6
MAX_REPEATED_NGRAM_FRACTION = 0.35

WRITE_PROMPT = re.compile(r"\s*(write|define|implement)\b", re.IGNORECASE)
EXPLAIN_PROMPT = re.compile(r"\s*(what (does|is)|explain|describe)\b", re.IGNORECASE)
BACKTICKED = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^\s*```[\w+-]*\n(.*?)\n?```\s*$", re.DOTALL)
WORDS = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class RuleVerdict:
    """What the rule says of one answer."""

    passes: bool
    """every check holds"""
    reasons: tuple[str, ...]
    """why the failed checks failed, in words (empty when the answer passes)"""
    failed: tuple[str, ...]
    """the names of the failed checks: finished, not_empty, parses, defines_name, mentions_name,
    not_repetitive"""
    score: float
    """the fraction of checks that hold, 0 to 1"""
    kind: Kind
    """the kind of prompt: write (a function), explain (a function), other"""


def user_text(prompt: Messages | str) -> str:
    """The text of the last user turn of a prompt (a plain string is one user turn)."""
    if isinstance(prompt, str):
        return prompt
    turns = [m["content"] for m in prompt if m.get("role") == "user"]
    return turns[-1] if turns else ""


def task_of(prompt: Messages | str) -> tuple[Kind, str | None]:
    """The kind of prompt and the name it asks about: ("write", "join") for "Write a Python function
    `join(a, *p)` ...", ("explain", "posixpath.join") for "What does `posixpath.join` do?"."""
    text = user_text(prompt)
    spans = BACKTICKED.findall(text)
    if WRITE_PROMPT.match(text):
        signature = next((s for s in spans if "(" in s), None)
        if signature is not None:
            return "write", signature.split("(")[0].strip().split(".")[-1]
    if EXPLAIN_PROMPT.match(text) and spans:
        return "explain", spans[0].split("(")[0].strip()
    return "other", None


def asked_name(prompt: Messages | str) -> tuple[str, bool] | None:
    """The name an answer to `prompt` must contain and whether its case counts: the function a write
    prompt asks for (exact case), the last part of the dotted name an explain prompt asks about (any
    case); None for other prompts."""
    kind, name = task_of(prompt)
    if name is None:
        return None
    return (name, True) if kind == "write" else (name.split(".")[-1], False)


def repetition(text: str) -> str | None:
    """Why `text` repeats itself, or None when it does not."""
    lines = Counter(line.strip() for line in text.splitlines())
    line, count = max(
        ((ln, c) for ln, c in lines.items() if len(ln) >= MIN_REPEATED_LINE_CHARS),
        key=lambda item: item[1],
        default=("", 0),
    )
    if count > MAX_LINE_REPEATS:
        shown = line if len(line) <= 40 else line[:37] + "..."
        return f"repeats itself: the line {shown!r} appears {count} times"
    words = WORDS.findall(text)
    grams = [tuple(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1)]
    if grams:
        repeated = (len(grams) - len(set(grams))) / len(grams)
        if repeated > MAX_REPEATED_NGRAM_FRACTION:
            return f"repeats itself: {repeated:.0%} of its {NGRAM}-grams are repeats"
    return None


def _code(answer: str) -> str:
    """The answer without a surrounding ``` fence."""
    fenced = FENCE.match(answer)
    return fenced.group(1) if fenced else answer


def _syntax_error(code: str) -> str | None:
    try:
        with warnings.catch_warnings():  # invalid escape sequences and the like are not our concern
            warnings.simplefilter("ignore")
            ast.parse(code)
    except SyntaxError as e:
        return f"not valid Python: {e.msg} (line {e.lineno})"
    except ValueError as e:  # a null byte
        return f"not valid Python: {e}"
    return None


def _defines(code: str, name: str) -> bool:
    """Whether `code` defines a function or method `name` (a text search when it does not parse)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return re.search(rf"\bdef\s+{re.escape(name)}\s*\(", code) is not None
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    return any(isinstance(node, functions) and node.name == name for node in ast.walk(tree))


def judge(prompt: Messages | str, answer: str, *, finished: bool = True) -> RuleVerdict:
    """Check `answer` to `prompt` (chat messages or the user's text). `finished`: the generation ended by
    itself (end-of-turn) rather than at the token limit."""
    kind, _ = task_of(prompt)
    asked = asked_name(prompt)
    checks: dict[str, str | None] = {  # check name → why it failed, or None when it holds
        "finished": None if finished else "unfinished: stopped at the token limit",
        "not_empty": None if answer.strip() else "empty",
    }
    if kind == "write" and asked is not None:
        name, code = asked[0], _code(answer)
        checks["parses"] = _syntax_error(code)
        checks["defines_name"] = None if _defines(code, name) else f"defines no function named {name!r}"
    elif kind == "explain" and asked is not None:
        last = asked[0]
        mentioned = re.search(rf"\b{re.escape(last)}\b", answer, re.IGNORECASE)
        checks["mentions_name"] = None if mentioned else f"does not mention {last!r}"
    checks["not_repetitive"] = repetition(answer)
    failed = {check: reason for check, reason in checks.items() if reason is not None}
    return RuleVerdict(
        passes=not failed,
        reasons=tuple(failed.values()),
        failed=tuple(failed),
        score=1 - len(failed) / len(checks),
        kind=kind,
    )


def compare(a: RuleVerdict, b: RuleVerdict) -> Literal["a", "b"] | None:
    """The better of two verdicts on answers to one prompt, or None when the rule cannot tell."""
    if a.passes != b.passes:
        return "a" if a.passes else "b"
    if a.passes or a.score == b.score:
        return None
    return "a" if a.score > b.score else "b"


def prefer(
    prompt: Messages | str, a: str, b: str, *, finished_a: bool = True, finished_b: bool = True
) -> Literal["a", "b"] | None:
    """Which of the answers `a` and `b` to `prompt` the rule prefers; None when it cannot tell."""
    return compare(judge(prompt, a, finished=finished_a), judge(prompt, b, finished=finished_b))
