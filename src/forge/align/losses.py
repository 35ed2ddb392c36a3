"""Alignment losses: every loss of reward modelling, DPO and PPO as a pure function over tensors.

Design choices:
- pure functions, no modules and no state (the KL controllers excepted), so each one is tested against a
  hand-computed example and the trainers (`reward.py`, `dpo.py`, `ppo.py`) stay loops over data;
- every function computes in float32 whatever the input dtype (log-probabilities of a bf16 model lose
  too much when summed over a sequence) and returns float32;
- numerically stable forms only: `log_softmax` for log-probabilities, `logsigmoid` for -log σ(x), `expm1`
  for the k3 KL estimator, `entr` (0 · log 0 = 0) for entropy;
- masks are 0/1 (bool, int or float) and select tokens: a masked-out position never reaches a sum, so a
  NaN or a -100 target there is harmless, and an empty mask gives a mean of 0, not NaN;
- quantities that PPO treats as constants (advantages, returns, old log-probabilities, old values) are
  detached here, and the statistics are Python floats for logging;
- arguments a caller can get wrong (an unknown `loss_type` or `estimator`, mismatched shapes, a
  non-positive β or clip range) raise `ValueError` naming the options.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

DPO_LOSS_TYPES = ("sigmoid", "ipo")
KL_ESTIMATORS = ("k1", "k3")


def _check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"expected tensors of one shape, got {shapes}")


# ----------------------------------------------------------------------------- masks and log-probabilities


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `values` over the positions where `mask` is 1, over all dims or over `dim`.

    `values` and `mask` have one shape; positions outside the mask are ignored even if NaN. An empty
    mask (or an empty row, with `dim`) gives 0, so an all-padding micro-batch contributes no gradient.
    """
    _check_same_shape(values=values, mask=mask)
    keep = mask.bool()
    total = torch.where(keep, values, 0.0)
    if dim is None:
        return total.sum() / keep.sum().clamp(min=1)
    return total.sum(dim) / keep.sum(dim).clamp(min=1)


def whiten(values: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Normalise `values` to mean 0 and variance 1 over the positions where `mask` is 1.

    The variance is the population one (divide by the count), so the masked mean of the result squared
    is 1 up to the 1e-8 added for stability. With `shift_mean=False` the mean is added back (only the
    scale changes), as for PPO rewards. Positions outside the mask are 0. Shapes are preserved.
    """
    values = values.float()
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, 0.0)


def token_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """log p(targets[b, t]) under softmax(logits[b, t]): logits (B, T, V), targets (B, T) long → (B, T) fp32.

    Every target must be a valid id; use `sequence_logprobs` with a mask where targets hold padding.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)}")
    logprobs = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    return logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)


def sequence_logprobs(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Log-probability of each sequence: sum over positions where `mask` is 1 of log p(target).

    logits (B, T, V), targets (B, T) long, mask (B, T) 0/1 → (B,) float32. Targets outside the mask are
    never read (they may be -100). The logits at position t predict targets[:, t]: shift before calling.
    """
    _check_same_shape(targets=targets, mask=mask)
    keep = mask.bool()
    logprobs = token_logprobs(logits, torch.where(keep, targets, 0))  # (B, T)
    return torch.where(keep, logprobs, 0.0).sum(-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy −Σ_v p log p of softmax(logits) at each position: (B, T, V) → (B, T) float32."""
    probs = F.softmax(logits.float(), dim=-1)
    return torch.special.entr(probs).sum(-1)  # entr(0) = 0, so -inf logits are fine


# ----------------------------------------------------------------------------- preference losses


def bradley_terry_loss(
    chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | float = 0.0
) -> Tensor:
    """Reward-model loss −log σ(r_c − r_r − m), mean over the batch → scalar float32.

    Bradley & Terry 1952; InstructGPT (Ouyang et al. 2022), eq. 1; the margin m as in Llama 2 (Touvron
    et al. 2023), eq. 2. chosen_rewards, rejected_rewards (B,); margin a float or (B,).
    """
    _check_same_shape(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    difference = chosen_rewards.float() - rejected_rewards.float() - margin  # (B,)
    return -F.logsigmoid(difference).mean()


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Direct Preference Optimization loss over sequence log-probabilities, each (B,).

    With h = (π_c − ref_c) − (π_r − ref_r), the difference of log-ratios:
    - "sigmoid": −log σ(βh), Rafailov et al. 2023, eq. 7; with label smoothing ε (conservative DPO,
      Mitchell 2023, the preference label is flipped with probability ε): −(1−ε) log σ(βh) − ε log σ(−βh);
    - "ipo": (h − 1/(2β))², Azar et al. 2023, eq. 17 with τ = β.

    Returns (loss, the mean over the batch as a scalar; chosen rewards β(π_c − ref_c), (B,); rejected
    rewards β(π_r − ref_r), (B,)), the implicit rewards detached, for logging.
    """
    _check_same_shape(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        reference_chosen_logps=reference_chosen_logps,
        reference_rejected_logps=reference_rejected_logps,
    )
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_logratios = policy_chosen_logps.float() - reference_chosen_logps.float()  # (B,)
    rejected_logratios = policy_rejected_logps.float() - reference_rejected_logps.float()  # (B,)
    h = chosen_logratios - rejected_logratios  # (B,)
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        if label_smoothing != 0.0:
            raise ValueError("label_smoothing applies to loss_type 'sigmoid' only; set it to 0 for 'ipo'")
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {DPO_LOSS_TYPES}")
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return losses.mean(), chosen_rewards, rejected_rewards


# ----------------------------------------------------------------------------- PPO


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from tokens sampled from π; shape preserved, float32.

    Schulman 2020, "Approximating KL Divergence": with r = π_ref/π,
    - "k1": −log r = log π − log π_ref (unbiased, high variance, can be negative);
    - "k3": (r − 1) − log r (unbiased, lower variance, always ≥ 0).
    """
    _check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    log_ratio = ref_logprobs.float() - logprobs.float()  # log r
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {KL_ESTIMATORS}")


def _groups(scores: Tensor, group: int) -> Tensor:
    """scores (N,) as (N / group, group) float32: one row per prompt's answers, which come consecutively."""
    if group < 2 or scores.dim() != 1 or len(scores) % group:
        raise ValueError(f"expected (N,) scores in whole groups of at least 2, got {tuple(scores.shape)} "
                         f"in groups of {group}")  # fmt: skip
    return scores.float().view(-1, group)


@torch.no_grad()
def leave_one_out(scores: Tensor, group: int) -> Tensor:
    """Each score minus the mean of the other scores of its group: the leave-one-out baseline of Kool et
    al. 2019 ("Buy 4 REINFORCE Samples, Get a Baseline for Free!", eq. 9), as RLOO uses it (Ahmadian et
    al. 2024, "Back to Basics", eq. 6).

    scores (N,) holds `group` consecutive answers to each prompt. The baseline of answer i depends only on
    the other answers, sampled independently of i, so a policy gradient weighted by the result stays
    unbiased; what every answer to a prompt shares (how easy the prompt is) cancels. Returns (N,) float32.
    """
    grouped = _groups(scores, group)
    others = (grouped.sum(1, keepdim=True) - grouped) / (group - 1)
    return (grouped - others).view(-1)


@torch.no_grad()
def centered_ranks(scores: Tensor, group: int) -> Tensor:
    """Each score replaced by its rank among its group, scaled to [−0.5, 0.5]: the rank-based fitness
    shaping of Wierstra et al. 2014 ("Natural Evolution Strategies", section 3.1) in the centred form of
    Salimans et al. 2017 ("Evolution Strategies as a Scalable Alternative to Reinforcement Learning",
    section 2.2).

    scores (N,) holds `group` consecutive answers to each prompt. The lowest of a group gets −0.5, the
    highest 0.5, the others evenly between; tied scores share the mean of their ranks, so every group sums
    to 0 and a group of equal scores pays 0. Only the order within a group counts: neither a shift nor a
    scale of a group's scores, nor a gap far larger than the others, changes what an answer is paid.
    Returns (N,) float32.
    """
    grouped = _groups(scores, group)
    below = (grouped.unsqueeze(2) > grouped.unsqueeze(1)).sum(2)  # (G, K): scores of the group under each
    ties = (grouped.unsqueeze(2) == grouped.unsqueeze(1)).sum(2)  # itself included
    ranks = below + (ties - 1) / 2  # 0 … K − 1, the mean rank among equal scores
    return (ranks / (group - 1) - 0.5).view(-1)


@torch.no_grad()
def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation, Schulman et al. 2016, eq. 16, over the response tokens.

    rewards, values, mask (B, T); mask marks the response tokens, which are contiguous in each row (a
    gap would end the episode there). δ_t = r_t + γ V_{t+1} − V_t with V = 0 after the last valid token,
    A_t = δ_t + γλ A_{t+1}. Returns (advantages, returns = advantages + values), both (B, T) float32,
    detached, 0 outside the mask.
    """
    _check_same_shape(rewards=rewards, values=values, mask=mask)
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must be in [0, 1], got gamma={gamma}, lam={lam}")
    keep = mask.bool()
    rewards = torch.where(keep, rewards.float(), 0.0)
    values = torch.where(keep, values.float(), 0.0)
    next_value = torch.zeros_like(values[:, 0])  # (B,)
    next_advantage = torch.zeros_like(values[:, 0])  # (B,)
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = torch.where(keep[:, t], delta + gamma * lam * next_advantage, 0.0)
        next_value = values[:, t]
        advantages[:, t] = next_advantage
    return advantages, advantages + values


def ppo_policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *, clip: float = 0.2
) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped surrogate, Schulman et al. 2017, eq. 7, as a loss: masked token mean of
    max(−A·ρ, −A·clip(ρ, 1 − c, 1 + c)) with ρ = exp(logprobs − old_logprobs). All (B, T).

    Returns (scalar loss, stats): "clip_fraction", the fraction of tokens where the clipped term is the
    larger one (their gradient is 0); "approx_kl", the mean of (ρ − 1) − log ρ (k3 of KL(π_old ‖ π)).
    """
    _check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    if clip <= 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    advantages = advantages.detach().float()
    log_ratio = logprobs.float() - old_logprobs.detach().float()  # (B, T)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean((clipped > unclipped).float(), mask).item(),
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask).item(),
        }
    return loss, stats


def ppo_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, *, clip: float = 0.2
) -> tuple[Tensor, dict[str, float]]:
    """Clipped value loss as in OpenAI baselines' PPO2 and TRL: masked token mean of
    0.5 · max((V − R)², (clip(V, V_old − c, V_old + c) − R)²). All (B, T).

    Returns (scalar loss, stats): "value_clip_fraction", the fraction of tokens where the clipped term
    is the larger one.
    """
    _check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    if clip <= 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    values = values.float()
    old_values = old_values.detach().float()
    returns = returns.detach().float()
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    with torch.no_grad():
        stats = {"value_clip_fraction": masked_mean((clipped_loss > unclipped_loss).float(), mask).item()}
    return loss, stats


class AdaptiveKLController:
    """The KL coefficient β of PPO's reward r − β·KL, steered towards a target KL.

    Ziegler et al. 2019 (Fine-Tuning LMs from Human Preferences), section 2.2: β ← β·(1 + K_β·e) with
    e = clip((KL − target)/target, −0.2, 0.2). K_β = n_steps/horizon, as in the paper's code
    (openai/lm-human-preferences) and TRL, so β moves by at most 20% per `horizon` samples.
    """

    def __init__(self, init_beta: float, target: float, horizon: int) -> None:
        if init_beta <= 0 or target <= 0 or horizon <= 0:
            raise ValueError(
                f"init_beta, target and horizon must be > 0, got {init_beta}, {target}, {horizon}"
            )
        self.value = init_beta
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Adjust β after `n_steps` samples whose mean KL was `current_kl`."""
        error = min(max((current_kl - self.target) / self.target, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon


class FixedKLController:
    """A constant KL coefficient β, with the same interface as `AdaptiveKLController`."""

    def __init__(self, beta: float) -> None:
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.value = beta

    def update(self, current_kl: float, n_steps: int) -> None:
        """Do nothing: β stays fixed."""
