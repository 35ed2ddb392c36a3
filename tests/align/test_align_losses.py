"""Alignment losses against values computed by hand (math / numpy), never by the function under test."""

import math

import numpy as np
import pytest
import torch

from forge.align.losses import (
    AdaptiveKLController,
    FixedKLController,
    bradley_terry_loss,
    centered_ranks,
    dpo_loss,
    entropy_from_logits,
    gae,
    kl_penalty,
    leave_one_out,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    sequence_logprobs,
    token_logprobs,
    whiten,
)


def _t(values: list[float] | list[list[float]]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _neg_log_sigmoid(x: float) -> float:
    return math.log1p(math.exp(-x))


# ----------------------------------------------------------------------------- masks and log-probabilities


def test_masked_mean_ignores_masked_positions_even_nan() -> None:
    values = torch.tensor([[1.0, 2.0, float("nan")], [4.0, 8.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    assert masked_mean(values, mask).item() == pytest.approx((1 + 2 + 8 + 6) / 4)
    torch.testing.assert_close(masked_mean(values, mask, dim=1), _t([1.5, 7.0]))
    assert masked_mean(values, torch.zeros_like(mask)).item() == 0.0  # empty mask: 0, not NaN


def test_whiten_hand_computed_and_zero_mean_unit_variance_on_mask() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[True, True, True, False]])
    # mean 2, population variance (1 + 0 + 1) / 3
    s = math.sqrt(2 / 3)
    torch.testing.assert_close(whiten(values, mask), _t([[-1 / s, 0.0, 1 / s, 0.0]]))
    torch.testing.assert_close(whiten(values, mask, shift_mean=False), _t([[2 - 1 / s, 2, 2 + 1 / s, 0]]))

    generator = torch.Generator().manual_seed(0)
    values = torch.randn(3, 7, generator=generator) * 5 + 3
    mask = torch.rand(3, 7, generator=generator) > 0.3
    kept = whiten(values, mask)[mask].numpy()
    assert kept.mean() == pytest.approx(0.0, abs=1e-5)
    assert kept.var() == pytest.approx(1.0, abs=1e-5)
    assert (whiten(values, mask)[~mask] == 0).all()


def test_sequence_logprobs_tiny_vocabulary_with_mask() -> None:
    # V = 3; row 0: uniform, then probs (1/4, 1/2, 1/4), then a padded position with target -100
    logits = torch.tensor(
        [
            [[0.0, 0.0, 0.0], [0.0, math.log(2), 0.0], [5.0, -5.0, 1.0]],
            [[math.log(3), 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        ]
    )  # (B=2, T=3, V=3)
    targets = torch.tensor([[2, 1, -100], [0, 2, 1]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    expected = _t([math.log(1 / 3) + math.log(1 / 2), math.log(3 / 5) + math.log(1 / 3)])
    out = sequence_logprobs(logits, targets, mask)
    assert out.dtype == torch.float32 and out.shape == (2,)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(sequence_logprobs(logits, targets, mask.bool()), expected)
    # bf16 logits are promoted: the log-softmax runs in float32
    assert sequence_logprobs(logits.bfloat16(), targets, mask).dtype == torch.float32


def test_token_logprobs_shape_and_values() -> None:
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, 0.0]]])  # (1, 2, 2)
    out = token_logprobs(logits, torch.tensor([[1, 0]]))
    torch.testing.assert_close(out, _t([[math.log(3 / 4), math.log(1 / 2)]]))
    with pytest.raises(ValueError, match="do not match"):
        token_logprobs(logits, torch.tensor([[1, 0, 1]]))


def test_entropy_from_logits_uniform_and_minus_inf() -> None:
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, -float("inf"), -float("inf")]]])
    out = entropy_from_logits(logits)
    assert out.shape == (1, 2) and out.dtype == torch.float32
    torch.testing.assert_close(out, _t([[math.log(4), math.log(2)]]))


# ----------------------------------------------------------------------------- preference losses


def test_bradley_terry_values_at_known_reward_differences() -> None:
    chosen, rejected = _t([0.0, 1.0, -1.0]), _t([0.0, 0.0, 1.0])  # differences 0, 1, -2
    expected = (math.log(2) + math.log1p(math.exp(-1)) + math.log1p(math.exp(2))) / 3
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)


def test_bradley_terry_margin_float_and_per_example() -> None:
    chosen, rejected = _t([2.0, 2.0]), _t([1.0, 1.0])
    assert bradley_terry_loss(chosen, rejected, 0.5).item() == pytest.approx(_neg_log_sigmoid(0.5))
    loss = bradley_terry_loss(chosen, rejected, margin=_t([0.0, 3.0])).item()
    assert loss == pytest.approx((_neg_log_sigmoid(1.0) + _neg_log_sigmoid(-2.0)) / 2, rel=1e-6)


def test_bradley_terry_gradient_raises_chosen_and_lowers_rejected() -> None:
    chosen = _t([0.5, -1.0]).requires_grad_()
    rejected = _t([0.0, 0.0]).requires_grad_()
    bradley_terry_loss(chosen, rejected).backward()
    assert chosen.grad is not None and rejected.grad is not None
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descent pushes r_c up, r_r down
    # d/dr_c of mean(-log σ(d)) = -σ(-d) / B
    torch.testing.assert_close(chosen.grad, _t([-_sigmoid(-0.5) / 2, -_sigmoid(1.0) / 2]))


def test_bradley_terry_large_difference_is_finite() -> None:
    loss = bradley_terry_loss(_t([-200.0]), _t([200.0]))
    assert loss.item() == pytest.approx(400.0)


# policy and reference log-probs: chosen log-ratios (1, 0), rejected log-ratios (-1, 1), so h = (2, -1)
POLICY_CHOSEN, POLICY_REJECTED = _t([-1.0, -2.0]), _t([-3.0, -1.0])
REFERENCE_CHOSEN, REFERENCE_REJECTED = _t([-2.0, -2.0]), _t([-2.0, -2.0])
DPO_INPUTS = (POLICY_CHOSEN, POLICY_REJECTED, REFERENCE_CHOSEN, REFERENCE_REJECTED)


def test_dpo_sigmoid_loss_and_implicit_rewards() -> None:
    loss, chosen_rewards, rejected_rewards = dpo_loss(*DPO_INPUTS, beta=0.1)
    expected = (_neg_log_sigmoid(0.1 * 2) + _neg_log_sigmoid(0.1 * -1)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(chosen_rewards, _t([0.1, 0.0]))
    torch.testing.assert_close(rejected_rewards, _t([-0.1, 0.1]))


def test_dpo_ipo_value() -> None:
    loss, _, _ = dpo_loss(*DPO_INPUTS, beta=0.1, loss_type="ipo")
    # 1/(2β) = 5: ((2 - 5)² + (-1 - 5)²) / 2
    assert loss.item() == pytest.approx((9 + 36) / 2, rel=1e-6)


def test_dpo_label_smoothing() -> None:
    loss, _, _ = dpo_loss(*DPO_INPUTS, beta=0.5, label_smoothing=0.1)
    per_example = [0.9 * _neg_log_sigmoid(0.5 * h) + 0.1 * _neg_log_sigmoid(-0.5 * h) for h in (2.0, -1.0)]
    assert loss.item() == pytest.approx(sum(per_example) / 2, rel=1e-6)


def test_dpo_gradient_raises_chosen_policy_logp() -> None:
    policy_chosen = POLICY_CHOSEN.clone().requires_grad_()
    loss, chosen_rewards, _ = dpo_loss(policy_chosen, POLICY_REJECTED, REFERENCE_CHOSEN, REFERENCE_REJECTED)
    loss.backward()
    assert policy_chosen.grad is not None and (policy_chosen.grad < 0).all()
    assert not chosen_rewards.requires_grad


def test_dpo_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="sigmoid.*ipo"):
        dpo_loss(*DPO_INPUTS, loss_type="hinge")
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(*DPO_INPUTS, beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(*DPO_INPUTS, label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(*DPO_INPUTS, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="one shape"):
        dpo_loss(POLICY_CHOSEN, POLICY_REJECTED, REFERENCE_CHOSEN, _t([-1.0]))


# ----------------------------------------------------------------------------- KL


def test_kl_penalty_k1_and_k3_on_known_logprobs() -> None:
    logprobs = torch.log(_t([0.5, 0.2, 0.9]))
    ref_logprobs = torch.log(_t([0.25, 0.4, 0.9]))  # r = π_ref/π = 0.5, 2, 1
    torch.testing.assert_close(
        kl_penalty(logprobs, ref_logprobs, "k1"), _t([math.log(2), math.log(0.5), 0.0])
    )
    expected_k3 = _t([-0.5 - math.log(0.5), 1.0 - math.log(2), 0.0])
    torch.testing.assert_close(kl_penalty(logprobs, ref_logprobs, estimator="k3"), expected_k3)


def test_kl_penalty_k3_nonnegative_and_zero_when_equal() -> None:
    generator = torch.Generator().manual_seed(0)
    logprobs = -torch.rand(4, 9, generator=generator) * 6
    ref_logprobs = -torch.rand(4, 9, generator=generator) * 6
    k3 = kl_penalty(logprobs, ref_logprobs, "k3")
    assert k3.shape == (4, 9) and (k3 >= 0).all()
    assert (kl_penalty(logprobs, logprobs, "k3") == 0).all()
    assert (kl_penalty(logprobs, logprobs, "k1") == 0).all()
    with pytest.raises(ValueError, match="k1.*k3"):
        kl_penalty(logprobs, ref_logprobs, "k2")


# ----------------------------------------------------------------------------- leave-one-out baseline


def test_leave_one_out_by_hand() -> None:
    # two prompts, three answers each: 1 − (2 + 6)/2 = −3, 2 − (1 + 6)/2 = −1.5, 6 − (1 + 2)/2 = 4.5;
    # a shift shared by a group (the second is the first + 10) cancels
    scores = _t([1.0, 2.0, 6.0, 11.0, 12.0, 16.0])
    torch.testing.assert_close(leave_one_out(scores, 3), _t([-3.0, -1.5, 4.5, -3.0, -1.5, 4.5]))
    torch.testing.assert_close(leave_one_out(_t([0.0, -4.0]), 2), _t([4.0, -4.0]))


@pytest.mark.parametrize("shaping", [leave_one_out, centered_ranks])
@pytest.mark.parametrize(("shape", "group"), [((6,), 4), ((6,), 1), ((2, 3), 3)])
def test_group_payments_reject_partial_groups(shaping, shape: tuple[int, ...], group: int) -> None:
    with pytest.raises(ValueError, match="groups of"):
        shaping(torch.zeros(shape), group)


def test_centered_ranks_by_hand() -> None:
    # four answers: ranks 1, 3, 0, 2 → rank / 3 − 0.5; the second group is the first scaled by 100 and
    # shifted, with its largest gap 1000× the others': only the order counts
    scores = _t([2.0, 9.0, -1.0, 3.0, 200.0, 9e5, -100.0, 300.0])
    expected = _t([-1 / 6, 0.5, -0.5, 1 / 6])
    torch.testing.assert_close(centered_ranks(scores, 4), torch.cat([expected, expected]))
    # ties share their mean rank: [5, 5, 1] → ranks 1.5, 1.5, 0; all equal → 0
    torch.testing.assert_close(centered_ranks(_t([5.0, 5.0, 1.0, 7.0, 7.0, 7.0]), 3),
                               _t([0.25, 0.25, -0.5, 0.0, 0.0, 0.0]))  # fmt: skip
    assert centered_ranks(_t([3.0, 1.0, 2.0, 0.5]), 2).tolist() == [0.5, -0.5, 0.5, -0.5]


# ----------------------------------------------------------------------------- GAE


def test_gae_one_row_by_hand() -> None:
    rewards, values = _t([[0.0, 0.0, 1.0]]), _t([[0.5, 0.6, 0.7]])
    advantages, returns = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.95)
    # δ2 = 1 - 0.7 = 0.3 (V after the last token is 0); δ1 = 0.7 - 0.6; δ0 = 0.6 - 0.5
    a2 = 0.3
    a1 = 0.1 + 0.95 * a2
    a0 = 0.1 + 0.95 * a1
    torch.testing.assert_close(advantages, _t([[a0, a1, a2]]))
    torch.testing.assert_close(returns, _t([[a0 + 0.5, a1 + 0.6, a2 + 0.7]]))
    # λ = 1, γ = 1: returns are the undiscounted reward-to-go
    _, returns = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    torch.testing.assert_close(returns, _t([[1.0, 1.0, 1.0]]))


def test_gae_padded_row_is_zero_outside_mask() -> None:
    rewards = _t([[0.0, 0.0, 1.0], [0.2, 1.0, 9.0]])
    values = _t([[0.5, 0.6, 0.7], [0.4, 0.3, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # row 1 ends at t = 1: δ1 = 1.0 - 0.3, δ0 = 0.2 + 0.3 - 0.4
    b1 = 0.7
    b0 = 0.1 + 0.95 * b1
    torch.testing.assert_close(advantages[1], _t([b0, b1, 0.0]))
    torch.testing.assert_close(returns[1], _t([b0 + 0.4, b1 + 0.3, 0.0]))
    a1 = 0.1 + 0.95 * 0.3
    torch.testing.assert_close(advantages[0], _t([0.1 + 0.95 * a1, a1, 0.3]))


def test_gae_discount() -> None:
    # γ = 0.5, λ = 0.5, V = 0: A_t = r_t + 0.25·A_{t+1}
    advantages, _ = gae(_t([[1.0, 0.0, 4.0]]), torch.zeros(1, 3), torch.ones(1, 3), gamma=0.5, lam=0.5)
    torch.testing.assert_close(advantages, _t([[1.0 + 0.25 * 1.0, 1.0, 4.0]]))
    with pytest.raises(ValueError, match="gamma"):
        gae(_t([[1.0]]), _t([[0.0]]), torch.ones(1, 1), gamma=1.5)


# ----------------------------------------------------------------------------- PPO


def test_ppo_policy_loss_inside_clip_range_is_minus_ratio_times_advantage() -> None:
    ratios = np.array([[0.9, 1.0, 1.15, 0.85]])
    advantages = np.array([[2.0, -1.0, 0.5, -3.0]])
    old_logprobs = torch.full((1, 4), -1.0)
    logprobs = old_logprobs + torch.from_numpy(np.log(ratios)).float()
    loss, stats = ppo_policy_loss(
        logprobs, old_logprobs, torch.from_numpy(advantages).float(), torch.ones(1, 4)
    )
    assert loss.item() == pytest.approx(float(np.mean(-ratios * advantages)), rel=1e-5)
    assert stats["clip_fraction"] == 0.0
    assert stats["approx_kl"] == pytest.approx(float(np.mean(ratios - 1 - np.log(ratios))), rel=1e-4)


def test_ppo_policy_loss_clips_outside_range_for_both_signs() -> None:
    # ratio, advantage → per-token loss max(-Aρ, -A·clip(ρ, 0.8, 1.2)):
    # (1.1, +1) → -1.1 inside; (1.5, +1) → -1.2 clipped; (0.5, +1) → -0.5 unclipped (pessimistic);
    # (1.5, -1) → 1.5 unclipped; (0.5, -1) → 0.8 clipped; the last token is masked out
    ratios = np.array([[1.1, 1.5, 0.5, 1.5, 0.5, 10.0]])
    advantages = torch.tensor([[1.0, 1.0, 1.0, -1.0, -1.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    old_logprobs = torch.full((1, 6), -2.0)
    logprobs = (old_logprobs + torch.from_numpy(np.log(ratios)).float()).requires_grad_()
    loss, stats = ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip=0.2)
    assert loss.item() == pytest.approx((-1.1 - 1.2 - 0.5 + 1.5 + 0.8) / 5, rel=1e-5)
    assert stats["clip_fraction"] == pytest.approx(2 / 5)
    kept = ratios[0, :5]
    assert stats["approx_kl"] == pytest.approx(float(np.mean(kept - 1 - np.log(kept))), rel=1e-4)
    loss.backward()
    # d/d logprob of -Aρ is -Aρ; clipped tokens and the masked token get no gradient
    assert logprobs.grad is not None
    torch.testing.assert_close(logprobs.grad, _t([[-1.1 / 5, 0.0, -0.5 / 5, 1.5 / 5, 0.0, 0.0]]))


def test_ppo_value_loss_clipping() -> None:
    # old values 0, c = 0.2: (V, R) = (0.1, 0) inside → 0.01; (0.5, 1) → clipped V 0.2 is worse, 0.64;
    # (0.5, 0) → unclipped 0.25 is worse; (-0.5, 0) → 0.25; the last token is masked out
    values = _t([[0.1, 0.5, 0.5, -0.5, 50.0]]).requires_grad_()
    returns = _t([[0.0, 1.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, stats = ppo_value_loss(values, torch.zeros(1, 5), returns, mask, clip=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.01 + 0.64 + 0.25 + 0.25) / 4, rel=1e-5)
    assert stats["value_clip_fraction"] == pytest.approx(1 / 4)
    loss.backward()
    # gradient 0.5 · 2(V − R) / 4 where the unclipped term is active, 0 where the clipped one is
    assert values.grad is not None
    torch.testing.assert_close(values.grad, _t([[0.1 / 4, 0.0, 0.5 / 4, -0.5 / 4, 0.0]]))


def test_ppo_losses_reject_bad_clip() -> None:
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="clip"):
        ppo_policy_loss(x, x, x, x, clip=0.0)
    with pytest.raises(ValueError, match="clip"):
        ppo_value_loss(x, x, x, x, clip=-1.0)


# ----------------------------------------------------------------------------- KL controllers


def test_adaptive_kl_controller_moves_towards_target_with_bounded_step() -> None:
    controller = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10_000)
    controller.update(current_kl=6.6, n_steps=1000)  # e = 0.1, K_β = 0.1
    assert controller.value == pytest.approx(0.1 * (1 + 0.1 * 0.1))

    up = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10_000)
    up.update(current_kl=1e6, n_steps=1000)  # e clipped at 0.2
    assert up.value == pytest.approx(0.1 * 1.02)

    down = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10_000)
    down.update(current_kl=0.0, n_steps=1000)  # e clipped at -0.2
    assert down.value == pytest.approx(0.1 * 0.98)

    steady = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10_000)
    steady.update(current_kl=6.0, n_steps=1000)
    assert steady.value == pytest.approx(0.1)
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKLController(init_beta=0.1, target=6.0, horizon=0)


def test_fixed_kl_controller_never_moves() -> None:
    controller = FixedKLController(0.05)
    controller.update(current_kl=100.0, n_steps=1000)
    assert controller.value == 0.05
