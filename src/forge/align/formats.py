"""The JSONL formats of alignment data, read with errors that name FILE:LINE and the way out.

- prompts: one `{"messages": [...]}` per line (a last assistant turn, the reference answer, is dropped:
  `forge data synth-sft` files work as they are) or `{"prompt": "text"}` / `{"prompt": [messages]}`;
- preferences: one `{"prompt": messages, "chosen": str, "rejected": str}` per line; a plain string
  prompt is read as one user turn.

A prompt is a list of `{"role": "system"|"user"|"assistant", "content": str}` ending with a user turn.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from forge.errors import DataError

ROLES = ("system", "user", "assistant")
Messages = list[dict[str, str]]


def compact_json(value: Any) -> str:
    """`value` as one line of JSON, without spaces (non-ASCII kept)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def prompt_key(prompt: Messages) -> str:
    """A prompt as the compact JSON the store keeps (to compare prompts, e.g. with `prompts_with_pairs`)."""
    return compact_json([{"role": m["role"], "content": m["content"]} for m in prompt])


def parse_prompt(value: Any, where: str) -> Messages:
    """A prompt as chat messages: a string is one user turn; a list must hold {"role", "content"} messages
    and end with a user turn. Errors start with `where` (e.g. "prefs.jsonl:3: prompt")."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: the prompt is empty")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: must be a string or a non-empty list of chat messages")
    messages = []
    for i, message in enumerate(value):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in ROLES or not isinstance(content, str):
            raise DataError(
                f'{where}[{i}]: each message must be {{"role": {" | ".join(ROLES)}, "content": str}}, '
                f"got {compact_json(message)[:80]}"
            )
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        raise DataError(f"{where}: the last message must be the user's turn (the one to answer)")
    return messages


def _json_lines(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """("FILE:LINE", object) for each non-blank line of a JSONL file."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg}); write one JSON object per line") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: each line must be a JSON object, got {type(record).__name__}")
        yield where, record


def read_prompts(path: str | Path) -> list[Messages]:
    """Prompts from JSONL: {"messages": [...]} per line (a last assistant turn, the reference answer, is
    dropped; `forge data synth-sft` writes such files) or {"prompt": "text" or [...]}."""
    prompts = []
    for where, record in _json_lines(path):
        if "messages" in record:
            messages = record["messages"]
            last = messages[-1] if isinstance(messages, list) and messages else None
            if isinstance(last, dict) and last.get("role") == "assistant":
                messages = messages[:-1]
            prompts.append(parse_prompt(messages, f"{where}: messages"))
        elif "prompt" in record:
            prompts.append(parse_prompt(record["prompt"], f"{where}: prompt"))
        else:
            raise DataError(f"{where}: no 'messages' or 'prompt' field; write {{\"prompt\": \"...\"}}")
    if not prompts:
        raise DataError(f"{path}: no prompts in the file")
    return prompts


def read_preferences(path: str | Path) -> list[dict[str, Any]]:
    """Preference JSONL ({"prompt": messages or text, "chosen": str, "rejected": str} per line), checked
    whole before anything is returned; prompts come back as messages."""
    records = []
    for where, record in _json_lines(path):
        for name in ("prompt", "chosen", "rejected"):
            if name not in record:
                raise DataError(
                    f"{where}: no {name!r} field; each line must be "
                    '{"prompt": ..., "chosen": "...", "rejected": "..."}'
                )
        prompt = parse_prompt(record["prompt"], f"{where}: prompt")
        chosen, rejected = record["chosen"], record["rejected"]
        for name, value in (("chosen", chosen), ("rejected", rejected)):
            if not isinstance(value, str):
                raise DataError(f"{where}: {name!r} must be a string, got {type(value).__name__}")
        if chosen == rejected:
            raise DataError(f"{where}: 'chosen' and 'rejected' are the same text; drop the line")
        records.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    if not records:
        raise DataError(f"{path}: no preference pairs in the file")
    return records
