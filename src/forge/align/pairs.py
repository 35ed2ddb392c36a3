"""Preference pairs as model input for reward modelling and DPO: split, encode, batch, plot.

The pairs are read by `forge.align.formats.read_preferences` (one `{"prompt", "chosen", "rejected"}` per
line, the prompt as chat messages).

Design choices:
- a side of a pair is what the chat template gives at inference, the prompt with the generation prompt
  (`render(..., add_generation_prompt=True)`), then the answer and its end-of-turn; the answer tokens
  with that end-of-turn are the *response*, the only tokens DPO scores;
- a pair with a side longer than `seq_len` tokens is left out and counted, never cut: a truncated answer
  is not the answer that was judged, and cutting the prompt changes the question;
- the held-out split hashes each prompt with a seed, so no prompt is on both sides, the split does not
  depend on the order of the lines, and a reward model and a DPO run on one file with one seed hold out
  the same pairs;
- a batch stacks the chosen sides over the rejected ones, (2B, T), right-padded to the longest side in
  the batch; with a causal model the padding never reaches a real token;
- `PairLoader` serves the pairs in a seeded order per epoch; its whole state is a batch counter, so a
  resumed run sees the same batches as an uninterrupted one.
"""

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from forge.align.formats import Messages, prompt_key, read_preferences
from forge.errors import DataError
from forge.io import write_with
from forge.tokenizer.bpe import Tokenizer
from forge.tokenizer.chat import render

IGNORE = -100
Pair = dict[str, Any]  # {"prompt": messages, "chosen": str, "rejected": str}, as read_preferences gives


def is_held_out(prompt: Messages, fraction: float, seed: int) -> bool:
    """Whether a prompt belongs to the held-out share `fraction`, by a seeded hash of its messages."""
    digest = hashlib.sha256(f"{seed}\0{prompt_key(prompt)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < fraction


def split_pairs(pairs: list[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(training, held-out) pairs; every pair of one prompt falls on the same side."""
    held_out = [is_held_out(pair["prompt"], fraction, seed) for pair in pairs]
    train = [pair for pair, out in zip(pairs, held_out, strict=True) if not out]
    return train, [pair for pair, out in zip(pairs, held_out, strict=True) if out]


def load_splits(data: str, val_data: str, val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Training and held-out pairs: `val_data` if given, else `val_fraction` of the prompts of `data`."""
    pairs = read_preferences(data)
    if val_data:
        return pairs, read_preferences(val_data)
    train, val = split_pairs(pairs, val_fraction, seed)
    if not train:
        raise DataError(f"{data}: every pair fell in the held-out split; lower --val-fraction")
    return train, val


def encode_side(tokenizer: Tokenizer, prompt: Messages, answer: str) -> tuple[list[int], int]:
    """Token ids of prompt + answer + end-of-turn, and how many of them are the prompt's."""
    prompt_ids, _ = render(tokenizer, prompt, add_generation_prompt=True)
    return prompt_ids + tokenizer.encode(answer) + [tokenizer.end_of_turn_id], len(prompt_ids)


@dataclass
class EncodedPairs:
    """Token ids of both sides of each pair, and the length of their (shared) prompt."""

    chosen: list[torch.Tensor]
    rejected: list[torch.Tensor]
    prompt_lengths: list[int]

    def __len__(self) -> int:
        return len(self.chosen)


def encode_pairs(tokenizer: Tokenizer, pairs: list[Pair], *, seq_len: int) -> tuple[EncodedPairs, int]:
    """Encode every pair whose sides both fit in `seq_len` tokens; return them and how many did not."""
    encoded = EncodedPairs([], [], [])
    too_long = 0
    for pair in pairs:
        chosen, prompt_length = encode_side(tokenizer, pair["prompt"], pair["chosen"])
        rejected, _ = encode_side(tokenizer, pair["prompt"], pair["rejected"])
        if max(len(chosen), len(rejected)) > seq_len:
            too_long += 1
            continue
        encoded.chosen.append(torch.tensor(chosen, dtype=torch.long))
        encoded.rejected.append(torch.tensor(rejected, dtype=torch.long))
        encoded.prompt_lengths.append(prompt_length)
    return encoded, too_long


def pad_right(sides: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences of ids as one right-padded (N, longest) tensor, and their lengths (N,)."""
    lengths = torch.tensor([len(side) for side in sides])
    ids = torch.full((len(sides), int(lengths.max())), pad_id, dtype=torch.long)
    for row, side in enumerate(sides):
        ids[row, : len(side)] = side
    return ids, lengths


def collate(
    pairs: EncodedPairs, indices: list[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pairs at `indices` as ids (2B, T), chosen sides first, right-padded; lengths (2B,); prompt
    lengths (2B,)."""
    sides = [pairs.chosen[i] for i in indices] + [pairs.rejected[i] for i in indices]
    ids, lengths = pad_right(sides, pad_id)
    return ids, lengths, torch.tensor([pairs.prompt_lengths[i] for i in indices] * 2)


def response_targets(
    ids: torch.Tensor, lengths: torch.Tensor, prompt_lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs (N, T-1) and next-token targets (N, T-1) that are -100 except on the response."""
    inputs, targets = ids[:, :-1], ids[:, 1:].clone()
    position = torch.arange(1, ids.shape[1])[None]  # (1, T-1): where each target sits in `ids`
    response = (position >= prompt_lengths[:, None]) & (position < lengths[:, None])  # (N, T-1)
    targets[~response] = IGNORE
    return inputs, targets


class PairLoader:
    """Batches of pair indices, reshuffled each epoch from (seed, epoch); the state is the batch counter."""

    def __init__(self, num_pairs: int, batch_size: int, *, seed: int) -> None:
        if num_pairs == 0:
            raise DataError("no training pairs: every pair was longer than --seq-len")
        self.num_pairs, self.batch_size, self.seed = num_pairs, batch_size, seed
        self.batches_per_epoch = max(1, num_pairs // batch_size)
        self.batch = 0

    def next_indices(self) -> list[int]:
        epoch, within = divmod(self.batch, self.batches_per_epoch)
        order = torch.randperm(self.num_pairs, generator=torch.Generator().manual_seed(self.seed + epoch))
        pick = order[(within * self.batch_size) % self.num_pairs :][: self.batch_size]
        if len(pick) < self.batch_size:  # fewer pairs than a batch: wrap around
            pick = torch.cat([pick, order[: self.batch_size - len(pick)]])
        self.batch += 1
        return pick.tolist()

    def state_dict(self) -> dict[str, Any]:
        return {"batch": self.batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batch = int(state["batch"])


def iter_indices(num_pairs: int, batch_size: int, max_batches: int = 0) -> Iterator[list[int]]:
    """Pair indices in order, in batches (all of them, or the first `max_batches` batches)."""
    for number, start in enumerate(range(0, num_pairs, batch_size)):
        if max_batches and number >= max_batches:
            return
        yield list(range(start, min(start + batch_size, num_pairs)))


def plot_pair_metrics(metrics_path: str | Path, out_path: str | Path, *, title: str = "") -> None:
    """Draw the training and held-out loss, and the held-out accuracy, against steps, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from forge.train.metrics import read_metrics

    records = read_metrics(metrics_path)
    train = [r for r in records if "train_loss" in r]
    val = [r for r in records if "val_loss" in r]
    fig, (ax_loss, ax_accuracy) = plt.subplots(1, 2, figsize=(11, 4.2))
    if train:
        ax_loss.plot([r["step"] for r in train], [r["train_loss"] for r in train], label="train", lw=1.2)
    if val:
        steps = [r["step"] for r in val]
        ax_loss.plot(steps, [r["val_loss"] for r in val], "o-", ms=4, label="held out")
        ax_accuracy.plot(steps, [r.get("val_accuracy") for r in val], "o-", ms=4, color="#55a868")
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    ax_accuracy.set(xlabel="step", ylabel="fraction of pairs", title="held-out accuracy (chosen > rejected)")
    ax_accuracy.set_ylim(0, 1.02)
    for ax in (ax_loss, ax_accuracy):
        ax.grid(alpha=0.3)
    if ax_loss.get_legend_handles_labels()[0]:
        ax_loss.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    write_with(out_path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
