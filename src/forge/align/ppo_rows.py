"""The rows of a PPO rollout (`forge.align.ppo`): which prompts it answers, the seed of each answer, the
answer's tokens, the padded prompt + answer rows, and the per-token rewards paid on them."""

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor

from forge.infer.batch import Completion

# ----------------------------------------------------------------------------- prompts


def prompt_indices(num_prompts: int, rollout_batch: int, iteration: int, seed: int) -> list[int]:
    """The prompts of rollout `iteration`: consecutive slices of a fresh shuffle per pass over the prompts."""
    indices, orders = [], {}
    for position in range(iteration * rollout_batch, (iteration + 1) * rollout_batch):
        epoch, i = divmod(position, num_prompts)
        if epoch not in orders:
            orders[epoch] = torch.randperm(num_prompts, generator=torch.Generator().manual_seed(seed + epoch))
        indices.append(int(orders[epoch][i]))
    return indices


def sample_seed(seed: int, iteration: int, index: int) -> int:
    """The sampling seed of answer `index` of rollout `iteration` (a hash: no two coincide by accident)."""
    digest = hashlib.blake2b(f"{seed}/{iteration}/{index}".encode(), digest_size=7).digest()
    return int.from_bytes(digest, "little")


# ----------------------------------------------------------------------------- answers


def answer_ids(completion: Completion, *, end_of_turn: int, end_of_text: int) -> tuple[list[int], bool]:
    """The answer's tokens including the one that ended it, and whether it ended before the limit.

    Sampling stops on end-of-turn; an end-of-text inside the answer ends it there (what follows is
    dropped, exactly as if sampling had stopped on it).
    """
    ids = completion.token_ids
    if end_of_text in ids:
        return ids[: ids.index(end_of_text) + 1], True
    if completion.finish_reason == "stop":
        return [*ids, end_of_turn], True
    return list(ids), False


def pad_rows(
    prompts: Sequence[list[int]], answers: Sequence[list[int]], pad_id: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Prompt + answer rows, right-padded: ids (N, T + 1), prompt lengths (N,), lengths (N,), and the
    mask (N, T) of the targets ids[:, 1:] that are answer tokens."""
    rows = [list(p) + list(a) for p, a in zip(prompts, answers, strict=True)]
    lengths = torch.tensor([len(r) for r in rows], device=device)
    prompt_lengths = torch.tensor([len(p) for p in prompts], device=device)
    ids = torch.full((len(rows), int(lengths.max())), pad_id, dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, device=device)
    columns = torch.arange(ids.shape[1] - 1, device=device)
    mask = (columns >= prompt_lengths[:, None] - 1) & (columns < lengths[:, None] - 1)  # (N, T)
    return ids, prompt_lengths, lengths, mask


def token_rewards(
    scores: Tensor, kl: Tensor, mask: Tensor, *, kl_coef: float, earned: Tensor | None = None
) -> Tensor:
    """Per-token rewards (N, T): −β·KL_t on each answer token, plus the answer's score (N,) on its last
    one: R(x, y) = r(x, y) − β log(π(y|x) / π_ref(y|x)) spread over tokens (Ziegler et al. 2019, eq. 2).
    `earned` (N, T), the part of each score earned on single tokens (a likelihood reward model's terms),
    is credited on those tokens instead, so a token's cost does not wait for the answer's end."""
    rewards = torch.where(mask, -kl_coef * kl.float(), 0.0)
    if earned is not None:
        earned = torch.where(mask, earned.float(), 0.0)
        rewards, scores = rewards + earned, scores.float() - earned.sum(1)
    columns = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask, columns, -1).max(dim=1).values  # (N,) each row's last answer token
    rewards[torch.arange(len(scores), device=mask.device), last] += scores.float()
    return rewards
