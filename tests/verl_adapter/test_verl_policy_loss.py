"""policy_loss.loss_mode 'gtpo' through verl's shared ppo_loss (used by the FSDP and the Megatron engines)."""

from __future__ import annotations

import math

import pytest
import torch

from gtpo_plugin import gtpo_policy_loss

verl = pytest.importorskip("verl")
from tensordict import TensorDict  # noqa: E402
from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY  # noqa: E402
from verl.utils import tensordict_utils as tu  # noqa: E402
from verl.workers.config import FSDPActorConfig, McoreActorConfig  # noqa: E402
from verl.workers.config.actor import PolicyLossConfig  # noqa: E402
from verl.workers.utils.losses import ppo_loss  # noqa: E402
from verl.workers.utils.padding import no_padding_2_padding  # noqa: E402

from gtpo_plugin.verl_adapter import policy_loss  # noqa: E402

# CI runs it on verl 0.9.0 too (step 2): verl's ppo_loss, policy-loss registry and actor configs.
pytestmark = pytest.mark.verl_compat


AGG_MODES = ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
ENGINES = {"fsdp": FSDPActorConfig, "megatron": McoreActorConfig}


def actor_config(engine="fsdp", loss_mode="gtpo", **overrides):
    values = {"ppo_mini_batch_size": 4, "ppo_micro_batch_size_per_gpu": 2, "rollout_n": 1,
              "loss_agg_mode": "seq-mean-token-mean", **overrides}
    return ENGINES[engine](strategy=engine, policy_loss=PolicyLossConfig(loss_mode=loss_mode), **values)


def nested(rows):
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


def engine_batch(seed, *, prompt_lens=(3, 2, 4, 1), response_lens=(4, 1, 6, 3), dp_size=1, log_ratio_scale=0.3,
                 rollout_is_weights=False):
    """What the engine hands ppo_loss: nested per-sample fields plus the global batch sizes, and the model's
    log-probs as one flat leaf tensor over every prompt+response token (so gradients can be read off it)."""
    generator = torch.Generator().manual_seed(seed)
    old = [-torch.rand(n, generator=generator) - 0.1 for n in response_lens]
    fields = {
        "prompts": nested([torch.randint(1, 50, (n,), generator=generator) for n in prompt_lens]),
        "responses": nested([torch.randint(1, 50, (n,), generator=generator) for n in response_lens]),
        "response_mask": nested([torch.ones(n, dtype=torch.long) for n in response_lens]),
        "old_log_probs": nested(old),
        "advantages": nested([torch.randn(n, generator=generator) for n in response_lens]),
    }
    if rollout_is_weights:
        fields["rollout_is_weights"] = nested([torch.rand(n, generator=generator) + 0.5 for n in response_lens])
    data = TensorDict(fields, batch_size=len(response_lens))
    tu.assign_non_tensor(data, dp_size=dp_size, batch_num_tokens=sum(response_lens) * dp_size,
                         global_batch_size=len(response_lens) * dp_size)
    chunks = []
    for p, o in zip(prompt_lens, old, strict=True):
        # log-probs are left-shifted by one token: position p-1+j holds response token j (verl's layout)
        shifted = o + log_ratio_scale * torch.randn(o.shape, generator=generator)
        chunks.append(torch.cat([torch.zeros(p - 1), shifted, torch.zeros(1)]))
    flat = torch.cat(chunks).requires_grad_(True)
    return data, flat


def padded(data, name):
    return data.select(name).to_padded_tensor()[name]


def core_loss(data, flat, config):
    mask = padded(data, "response_mask").bool()
    weights = padded(data, "rollout_is_weights") if data.get("rollout_is_weights", None) is not None else None
    return gtpo_policy_loss(
        padded(data, "old_log_probs"), no_padding_2_padding(flat, data), padded(data, "advantages"), mask,
        clip_ratio_low=config.clip_ratio_low, clip_ratio_high=config.clip_ratio_high,
        loss_agg_mode=config.loss_agg_mode, rollout_is_weights=weights,
    )


def loss_and_grad(loss_fn, flat):
    flat.grad = None
    loss = loss_fn()
    loss.backward()
    return loss.detach(), flat.grad.clone()


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("agg", AGG_MODES)
def test_verls_ppo_loss_computes_the_core_loss(engine, agg):
    config = actor_config(engine, loss_agg_mode=agg, clip_ratio_low=0.1, clip_ratio_high=0.28)
    data, flat = engine_batch(0, rollout_is_weights=True)
    metrics = {}

    def verl_loss():
        loss, step_metrics = ppo_loss(config, {"log_probs": flat}, data)
        metrics.update(step_metrics)
        return loss

    loss, grad = loss_and_grad(verl_loss, flat)
    expected_loss, expected_grad = loss_and_grad(lambda: core_loss(data, flat, config)[0], flat)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-7)
    assert {"actor/pg_loss", "actor/pg_clipfrac", "actor/ppo_kl"} <= set(metrics)


@pytest.mark.parametrize("agg", AGG_MODES)
def test_equals_verls_vanilla_loss_at_two_data_parallel_ranks_when_dual_clip_is_idle(agg):
    # vanilla = the same clipped surrogate plus dual-clip, which only acts on ratios above clip_ratio_c = 3;
    # with log-ratios of a few tenths both must agree, including verl's global-batch scaling (dp_size = 2).
    data, flat = engine_batch(1, dp_size=2, rollout_is_weights=True)
    loss, grad = loss_and_grad(lambda: ppo_loss(actor_config(loss_agg_mode=agg), {"log_probs": flat}, data)[0], flat)
    vanilla = actor_config(loss_mode="vanilla", loss_agg_mode=agg)
    expected_loss, expected_grad = loss_and_grad(lambda: ppo_loss(vanilla, {"log_probs": flat}, data)[0], flat)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-7)


def one_token(log_ratio, advantage):
    data = TensorDict({
        "prompts": nested([torch.tensor([1])]), "responses": nested([torch.tensor([2])]),
        "response_mask": nested([torch.ones(1, dtype=torch.long)]), "old_log_probs": nested([torch.tensor([-1.0])]),
        "advantages": nested([torch.tensor([advantage])]),
    }, batch_size=1)
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=1, global_batch_size=1)
    return data, torch.tensor([-1.0 + log_ratio, 0.0], requires_grad=True)


@pytest.mark.parametrize(("clip_high", "expected_loss", "expected_grad"), [
    (0.3, -1.3, 0.0),  # r = e^0.5 = 1.6487 > 1 + 0.3 with A = 1: clipped at 1.3, no gradient
    (0.8, -math.exp(0.5), -math.exp(0.5)),  # 1.6487 < 1.8: unclipped, d(−r·A)/d log π = −r
])
def test_clip_ratio_high_is_honoured(clip_high, expected_loss, expected_grad):
    data, flat = one_token(0.5, 1.0)
    loss, grad = loss_and_grad(lambda: ppo_loss(actor_config(clip_ratio_high=clip_high), {"log_probs": flat}, data)[0],
                               flat)
    assert float(loss) == pytest.approx(expected_loss, rel=1e-6)
    assert float(grad[0]) == pytest.approx(expected_grad, rel=1e-6)


@pytest.mark.parametrize(("clip_low", "expected_loss", "expected_grad"), [
    (0.2, 0.8, 0.0),  # r = e^-0.5 = 0.6065 < 1 − 0.2 with A = −1: loss max(r, 0.8)·1 = 0.8, no gradient
    (0.5, math.exp(-0.5), math.exp(-0.5)),  # 0.6065 > 0.5: unclipped, loss r, gradient r
])
def test_clip_ratio_low_is_honoured(clip_low, expected_loss, expected_grad):
    data, flat = one_token(-0.5, -1.0)
    loss, grad = loss_and_grad(lambda: ppo_loss(actor_config(clip_ratio_low=clip_low), {"log_probs": flat}, data)[0],
                               flat)
    assert float(loss) == pytest.approx(expected_loss, rel=1e-6)
    assert float(grad[0]) == pytest.approx(expected_grad, rel=1e-6)


def test_rollout_is_weights_multiply_the_token_losses():
    data, flat = engine_batch(2, rollout_is_weights=True)
    config = actor_config(loss_agg_mode="token-mean")
    loss = float(ppo_loss(config, {"log_probs": flat}, data)[0].detach())
    data["rollout_is_weights"] = nested([w * 3.0 for w in data["rollout_is_weights"].unbind()])
    assert float(ppo_loss(config, {"log_probs": flat}, data)[0].detach()) == pytest.approx(3.0 * loss, rel=1e-6)


def test_protected_tokens_get_no_gradient_and_amplified_tokens_get_w_times_more():
    # One completion with per-token advantages a·λ for λ = (2, 1, 0) at ratio 1: gradient −a·λ_t / |o|.
    data = TensorDict({
        "prompts": nested([torch.tensor([1, 1])]), "responses": nested([torch.tensor([4, 5, 6])]),
        "response_mask": nested([torch.ones(3, dtype=torch.long)]), "old_log_probs": nested([torch.full((3,), -1.0)]),
        "advantages": nested([torch.tensor([1.4, 0.7, 0.0])]),
    }, batch_size=1)
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=3, global_batch_size=1)
    flat = torch.tensor([0.0, -1.0, -1.0, -1.0, 0.0], requires_grad=True)
    _, grad = loss_and_grad(lambda: ppo_loss(actor_config(), {"log_probs": flat}, data)[0], flat)
    torch.testing.assert_close(grad[1:4], torch.tensor([-1.4, -0.7, 0.0]) / 3)


def test_registration_refuses_to_replace_another_loss_named_gtpo():
    mine = POLICY_LOSS_REGISTRY["gtpo"]
    assert mine is policy_loss.compute_policy_loss_gtpo
    POLICY_LOSS_REGISTRY["gtpo"] = lambda *args, **kwargs: None
    try:
        with pytest.raises(ValueError, match="already has a policy loss named 'gtpo'"):
            policy_loss.register()
    finally:
        POLICY_LOSS_REGISTRY["gtpo"] = mine
    policy_loss.register()  # registering the same function again is a no-op
    assert POLICY_LOSS_REGISTRY["gtpo"] is mine


def direct_call(config):
    data, flat = engine_batch(3)
    old, mask = padded(data, "old_log_probs"), padded(data, "response_mask").bool()
    return policy_loss.compute_policy_loss_gtpo(old, no_padding_2_padding(flat, data), padded(data, "advantages"),
                                                mask, loss_agg_mode="token-mean", config=config)


def test_batch_info_partly_filled_is_an_error_not_a_per_micro_batch_loss():
    config = actor_config()
    config.global_batch_info["dp_size"] = 2  # as if verl's engine had stopped setting the other two
    with pytest.raises(ValueError, match=r"lacks \['batch_num_tokens', 'global_batch_size'\]"):
        direct_call(config)


def test_a_config_without_batch_info_is_an_error():
    class Config:  # an actor config of a verl that dropped the field
        clip_ratio, clip_ratio_low, clip_ratio_high = 0.2, None, None

    with pytest.raises(ValueError, match="needs the actor config's global_batch_info"):
        direct_call(Config())


def test_verls_engine_fills_every_key_the_loss_requires():
    config = actor_config()
    data, flat = engine_batch(4, dp_size=2)
    ppo_loss(config, {"log_probs": flat}, data)
    assert set(policy_loss.GLOBAL_BATCH_KEYS) <= set(config.global_batch_info)
