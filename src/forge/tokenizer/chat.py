"""The chat template: a conversation → token ids, a loss mask, and trimming to a context window.

One definition serves training (SFT masks), `forge chat`, the server and generation:

    <|bos|> <|system|> text <|end|> <|user|> text <|end|> <|assistant|> text <|end|> … [<|assistant|>]

Design choices:
- role markers and the end-of-turn token are special ids inserted by code, never parsed from text, so a
  message that contains the string "<|end|>" cannot forge a turn (contents are encoded as plain text);
- the loss mask is 1 exactly on assistant content and the end-of-turn token that closes it: the model
  learns to answer and to stop, never to write the user's side;
- `fit_messages` keeps the system message(s) and the most recent turns that fit, dropping whole turns
  from the oldest, so the model never sees half a message.
"""

from collections.abc import Sequence
from typing import Any

from forge.errors import ForgeError
from forge.tokenizer.bpe import Tokenizer
from forge.tokenizer.special import ASSISTANT, BOS, END_OF_TURN, SPECIAL_TOKENS, SYSTEM, USER

ROLES = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}


def check_messages(messages: Sequence[Any]) -> None:
    """Raise a ForgeError naming the first malformed message (role, content) and how to fix it."""
    if not messages:
        raise ForgeError("the conversation has no messages; give at least one {'role': 'user', 'content': …}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            role = message.get("role") if isinstance(message, dict) else message
            raise ForgeError(f"messages[{i}]: role {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise ForgeError(f"messages[{i}]: 'content' must be a string")


def render(
    tokenizer: Tokenizer, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = False
) -> tuple[list[int], list[int]]:
    """Token ids of the conversation and its loss mask (1 on assistant content and its end-of-turn)."""
    check_messages(messages)
    ids, mask = [SPECIAL_TOKENS.index(BOS)], [0]
    end = SPECIAL_TOKENS.index(END_OF_TURN)
    for message in messages:
        content = tokenizer.encode(message["content"])
        trained = 1 if message["role"] == "assistant" else 0
        ids += [SPECIAL_TOKENS.index(ROLES[message["role"]]), *content, end]
        mask += [0] + [trained] * (len(content) + 1)
    if add_generation_prompt:
        ids.append(SPECIAL_TOKENS.index(ASSISTANT))
        mask.append(0)
    return ids, mask


def fit_messages(
    tokenizer: Tokenizer, messages: Sequence[dict[str, str]], max_tokens: int
) -> list[dict[str, str]]:
    """The system message(s) and the most recent turns whose rendering (with the generation prompt)
    takes at most `max_tokens` tokens."""
    check_messages(messages)
    system = [m for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    for start in range(max(len(turns), 1)):
        kept = system + turns[start:]
        if len(render(tokenizer, kept, add_generation_prompt=True)[0]) <= max_tokens:
            return kept
    need = len(render(tokenizer, system + turns[-1:], add_generation_prompt=True)[0])
    raise ForgeError(
        f"the system message and the last message alone take {need} tokens, more than the {max_tokens} "
        "that fit in the context with the answer; shorten them or ask for fewer new tokens"
    )
