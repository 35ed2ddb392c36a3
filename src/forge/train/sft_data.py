"""Conversations for supervised fine-tuning: read, render with the chat template, pack, batch.

Design choices:
- one template (`forge.tokenizer.chat.render`) makes the ids and the loss mask, the same one that
  `forge chat` and the server use at inference, so training and use never disagree on the format;
- targets are the next token where the mask is 1 (assistant content and its end-of-turn), else -100,
  which cross-entropy ignores: the loss is over assistant tokens only (`train_on="all"` counts every
  token after the first);
- packing: conversations are laid end to end in rows of `seq_len` tokens, first fit in a seeded order,
  with a segment id per conversation; the model's block-diagonal mask and restarting positions keep
  them from attending to each other (`Transformer.forward(segments=...)`). The rest of a row is padding
  (target -100). Without packing every conversation has a row of its own;
- a conversation longer than `seq_len + 1` tokens is not cut (a truncated answer teaches the model not to
  finish): it is left out and counted;
- `RowLoader` serves batches of rows in a seeded order per epoch; its whole state is a batch counter, so
  resuming is exact.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from forge.errors import DataError, ForgeError
from forge.tokenizer.bpe import Tokenizer
from forge.tokenizer.chat import render

IGNORE = -100


def read_conversations(path: str | Path) -> list[list[dict[str, str]]]:
    """The conversations of a JSONL file (one {"messages": [...]} per line); a bad line is an error
    naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path} not found; give a JSONL of {{'messages': [...]}} lines, e.g. from `forge data synth-sft`"
        )
    conversations = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                messages = record["messages"]
                render_check(messages)
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(
                    f"{path}:{number}: not a conversation ({type(e).__name__}: {e}); each line must be "
                    '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}'
                ) from None
            except ForgeError as e:
                raise DataError(f"{path}:{number}: {e}") from None
            conversations.append(messages)
    if not conversations:
        raise DataError(f"{path} holds no conversations")
    return conversations


def render_check(messages: Any) -> None:
    """Raise if `messages` is not a list of valid messages with at least one assistant turn."""
    from forge.tokenizer.chat import check_messages

    if not isinstance(messages, list):
        raise TypeError("'messages' must be a list")
    check_messages(messages)
    if not any(m["role"] == "assistant" for m in messages):
        raise ForgeError("the conversation has no assistant message to learn from")


@dataclass
class Encoded:
    """One conversation as model input and targets (both of its length - 1 tokens)."""

    inputs: np.ndarray
    targets: np.ndarray


def encode(
    tokenizer: Tokenizer, conversations: list[list[dict[str, str]]], *, seq_len: int, train_on: str
) -> tuple[list[Encoded], int]:
    """Render every conversation; return the ones that fit in `seq_len + 1` tokens and how many did not."""
    out, too_long = [], 0
    for messages in conversations:
        ids, mask = render(tokenizer, messages)
        if len(ids) > seq_len + 1:
            too_long += 1
            continue
        ids_array, mask_array = np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=bool)
        targets = ids_array[1:].copy()
        if train_on == "assistant":
            targets[~mask_array[1:]] = IGNORE
        out.append(Encoded(ids_array[:-1], targets))
    return out, too_long


@dataclass
class Rows:
    """Packed rows: inputs, targets and segment ids, each (N, seq_len)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    segments: torch.Tensor

    def __len__(self) -> int:
        return self.inputs.shape[0]


def pack(examples: list[Encoded], *, seq_len: int, pad_id: int, packing: bool, seed: int) -> Rows:
    """Lay the examples into rows of `seq_len` (first fit, in a seeded order; one per row without
    packing). Padding has target -100 and segment -1."""
    order = np.random.default_rng(seed).permutation(len(examples)) if packing else np.arange(len(examples))
    rows: list[list[int]] = []  # example indices per row
    free: list[int] = []
    for index in order.tolist():
        size = len(examples[index].inputs)
        target = next((r for r, room in enumerate(free) if room >= size), None) if packing else None
        if target is None:
            rows.append([])
            free.append(seq_len)
            target = len(rows) - 1
        rows[target].append(index)
        free[target] -= size
    inputs = torch.full((len(rows), seq_len), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), seq_len), IGNORE, dtype=torch.long)
    segments = torch.full((len(rows), seq_len), -1, dtype=torch.long)
    for r, members in enumerate(rows):
        start = 0
        for segment, index in enumerate(members):
            example = examples[index]
            end = start + len(example.inputs)
            inputs[r, start:end] = torch.from_numpy(example.inputs)
            targets[r, start:end] = torch.from_numpy(example.targets)
            segments[r, start:end] = segment
            start = end
    return Rows(inputs, targets, segments)


class RowLoader:
    """Batches of rows, reshuffled each epoch from (seed, epoch); the state is the batch counter."""

    def __init__(self, rows: Rows, batch_size: int, *, seed: int) -> None:
        if len(rows) == 0:
            raise DataError("no training rows: every conversation was longer than --seq-len")
        self.rows, self.batch_size, self.seed = rows, batch_size, seed
        self.batches_per_epoch = max(1, len(rows) // batch_size)
        self.batch = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        epoch, within = divmod(self.batch, self.batches_per_epoch)
        order = torch.randperm(len(self.rows), generator=torch.Generator().manual_seed(self.seed + epoch))
        pick = order[(within * self.batch_size) % len(self.rows) :][: self.batch_size]
        if len(pick) < self.batch_size:  # fewer rows than a batch: wrap around
            pick = torch.cat([pick, order[: self.batch_size - len(pick)]])
        self.batch += 1
        return self.rows.inputs[pick], self.rows.targets[pick], self.rows.segments[pick]

    def state_dict(self) -> dict[str, Any]:
        return {"batch": self.batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batch = int(state["batch"])


def iter_rows(rows: Rows, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Every row once, in order, in batches (for evaluation)."""
    for start in range(0, len(rows), batch_size):
        end = start + batch_size
        yield rows.inputs[start:end], rows.targets[start:end], rows.segments[start:end]
