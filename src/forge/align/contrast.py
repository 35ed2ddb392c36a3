"""Contrast pairs for the synthetic preferences: an answer the rule passes, against the same answer with
the name its prompt asks about replaced by a near miss (`forge label synth --renamed`).

Sampled pairs differ in many ways at once, so a reward model can learn the easy differences (unfinished,
invalid Python) and never the one that needs it to compare the answer with the prompt: does it write or
explain the function that was asked for? A contrast pair differs in that alone. The rule still decides:
a copy is kept only when the rule passes the original and fails the copy.

Design choices:
- the near miss looks like what a small model writes when it copies a name badly: one part of the name
  (between underscores, or a capitalised word) swapped for a part of another asked name
  (`library_dir_option` → `library_file_option`), or a run of one to three characters replaced, dropped
  or swapped (`asksaveasfilename` → `asksavxasfilename`);
- every whole-word occurrence of the name is replaced, in the case the rule checks (exact for the name a
  written function defines, any case for the name an explanation mentions), so the copy fails by its name
  and by nothing else;
- the replacement is seeded by a hash of the prompt and the answer: the same inputs give the same pairs
  in every process.
"""

import hashlib
import random
import re
import string
from collections.abc import Sequence

from forge.align.rule import Messages, asked_name

PART = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
LETTERS = string.ascii_lowercase


def name_parts(name: str) -> list[str]:
    """The parts of an identifier: `library_dir_option` → [library, dir, option], `TestResult` →
    [Test, Result]."""
    return PART.findall(name)


def _swap_part(name: str, rng: random.Random, parts: Sequence[str]) -> str:
    own = list(PART.finditer(name))
    if not own or not parts:
        return name
    match = rng.choice(own)
    new = rng.choice(parts)
    new = new[0].upper() + new[1:] if match.group()[0].isupper() else new.lower()
    return name[: match.start()] + new + name[match.end() :]


def _edit_characters(name: str, rng: random.Random) -> str:
    size = rng.randint(1, min(3, len(name)))
    start = rng.randrange(0, len(name) - size + 1)
    operation = rng.choice(("replace", "drop", "swap"))
    if operation == "swap" and size >= 2:
        middle = name[start : start + size][::-1]
    elif operation == "drop" and len(name) > size:
        middle = ""
    else:
        middle = "".join(rng.choice(LETTERS) for _ in range(size))
    return name[:start] + middle + name[start + size :]


def near_miss(name: str, rng: random.Random, parts: Sequence[str] = ()) -> str | None:
    """An identifier close to `name` but not equal to it in any case, or None when ten tries found none."""
    for _ in range(10):
        candidate = (
            _swap_part(name, rng, parts) if parts and rng.random() < 0.5 else _edit_characters(name, rng)
        )
        if candidate.isidentifier() and candidate.lower() != name.lower():
            return candidate
    return None


def renamed_answer(prompt: Messages | str, answer: str, parts: Sequence[str] = ()) -> str | None:
    """`answer` with every whole-word occurrence of the name `prompt` asks about replaced by one near miss
    (seeded by the prompt and the answer), or None when the prompt asks about no name or the answer never
    writes it."""
    asked = asked_name(prompt)
    if asked is None:
        return None
    name, exact_case = asked
    pattern = re.compile(rf"\b{re.escape(name)}\b", 0 if exact_case else re.IGNORECASE)
    if not pattern.search(answer):
        return None
    seed = hashlib.blake2b(f"{prompt!r}\0{answer}".encode(), digest_size=8).digest()
    miss = near_miss(name, random.Random(seed), [p for p in parts if p.lower() not in name.lower()])
    return None if miss is None else pattern.sub(lambda _: miss, answer)
