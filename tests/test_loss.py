"""The clipped surrogate on GTPO advantages: naive loops, gradients, and verl's own reductions."""

from __future__ import annotations

import math
import random

import pytest
import torch
from batches import Batch

from gtpo_plugin import LOSS_AGG_MODES, aggregate_loss, clipped_surrogate, compute_gtpo_advantage, gtpo_policy_loss


def naive_seq_mean_token_mean(old, new, adv, mask, low, high):
    """1/G Σ_i 1/|o_i| Σ_t max(−r a, −clip(r) a), over completions with at least one valid token."""
    old, new, adv, mask = old.tolist(), new.tolist(), adv.tolist(), mask.tolist()
    per_sequence = []
    for i in range(len(old)):
        terms = []
        for t in range(len(old[i])):
            if mask[i][t]:
                ratio = math.exp(new[i][t] - old[i][t])
                clipped = min(max(ratio, 1 - low), 1 + high)
                terms.append(max(-ratio * adv[i][t], -clipped * adv[i][t]))
        if terms:
            per_sequence.append(sum(terms) / len(terms))
    return sum(per_sequence) / len(per_sequence)


def random_inputs(seed, batch=6, length=7, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=generator, dtype=dtype) * 3
    new = old + torch.randn(batch, length, generator=generator, dtype=dtype) * 0.3
    adv = torch.randn(batch, length, generator=generator, dtype=dtype)
    lengths = torch.randint(0, length + 1, (batch,), generator=generator)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).to(dtype)
    return old, new, adv * mask, mask


def test_loss_matches_naive_loops():
    for seed in range(50):
        old, new, adv, mask = random_inputs(seed)
        if mask.sum() == 0:
            continue
        loss, metrics = gtpo_policy_loss(old, new, adv, mask, clip_ratio_low=0.2, clip_ratio_high=0.28)
        assert loss.item() == pytest.approx(naive_seq_mean_token_mean(old, new, adv, mask, 0.2, 0.28), rel=1e-10)
        assert 0.0 <= metrics["actor/pg_clipfrac"] <= 1.0


def test_gradcheck_float64():
    old, new, adv, mask = random_inputs(3)
    new.requires_grad_(True)
    weights = torch.rand_like(old) + 0.5
    for mode in LOSS_AGG_MODES:
        assert torch.autograd.gradcheck(
            lambda logp, mode=mode: gtpo_policy_loss(old, logp, adv, mask, loss_agg_mode=mode,
                                                     rollout_is_weights=weights)[0], (new,))


def test_protected_token_gets_zero_gradient_and_amplified_token_w_times_grpo():
    # Group of two sharing their first token 4: the positive one gets λ = w there, the negative one λ = 0.
    batch = Batch([[4, 1, 2], [4, 3, 5]], ["g", "g"], [1.0, 0.0], [[0.1] * 3, [0.1] * 3])
    common = dict(token_level_rewards=batch.token_level_rewards(), response_mask=batch.mask(),
                  responses=batch.responses(), index=batch.index(), entropy=batch.entropy(),
                  initial_entropy=math.inf, entropy_coef=0.0)
    gtpo_adv, _ = compute_gtpo_advantage(**common, amplification=3.0)
    grpo_adv, _ = compute_gtpo_advantage(**common, conflict_mode="none")

    def gradient(advantages):
        old = torch.full((2, 3), -1.0, dtype=torch.float64)
        new = old.clone().requires_grad_(True)  # ratio 1: inside the clip range
        gtpo_policy_loss(old, new, advantages.double(), batch.mask())[0].backward()
        return new.grad

    gtpo_grad, grpo_grad = gradient(gtpo_adv), gradient(grpo_adv)
    assert grpo_grad[1, 0] != 0  # GRPO pushes the shared token down in the negative completion
    assert gtpo_grad[1, 0].item() == 0.0  # GTPO does not
    assert gtpo_grad[0, 0].item() == pytest.approx(3.0 * grpo_grad[0, 0].item())
    assert torch.equal(gtpo_grad[:, 1:], grpo_grad[:, 1:])


def test_clipping_stops_the_gradient_outside_the_range():
    old = torch.zeros(1, 2, dtype=torch.float64)
    new = torch.tensor([[math.log(1.5), math.log(0.5)]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([[1.0, -1.0]], dtype=torch.float64)  # r = 1.5 > 1.2 with a > 0; r = 0.5 < 0.8 with a < 0
    loss, metrics = gtpo_policy_loss(old, new, adv, torch.ones(1, 2))
    loss.backward()
    assert new.grad.abs().max().item() == 0.0
    assert metrics["actor/pg_clipfrac"] == 1.0
    assert metrics["actor/ppo_kl"] == pytest.approx(-(math.log(1.5) + math.log(0.5)) / 2)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_aggregation_equals_verl_agg_loss(mode):
    core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")
    rng = random.Random(mode)
    for seed in range(10):
        old, new, adv, mask = random_inputs(seed + rng.randint(0, 1000), dtype=torch.float32)
        loss_mat, _ = clipped_surrogate(old, new, adv, mask)
        expected = core_algos.agg_loss(loss_mat, mask, mode)
        assert aggregate_loss(loss_mat, mask, mode).item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)


def test_unknown_aggregation_and_bad_shapes():
    old, new, adv, mask = random_inputs(0)
    with pytest.raises(ValueError, match="loss_agg_mode must be one of"):
        gtpo_policy_loss(old, new, adv, mask, loss_agg_mode="seq-mean")
    with pytest.raises(ValueError, match="advantages has shape"):
        gtpo_policy_loss(old, new, adv[:, :3], mask)
    with pytest.raises(ValueError, match="clip_ratio_low and clip_ratio_high must be >= 0"):
        gtpo_policy_loss(old, new, adv, mask, clip_ratio_low=-0.1)
