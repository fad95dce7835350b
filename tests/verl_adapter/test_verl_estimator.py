"""adv_estimator 'gtpo' through verl's own compute_advantage (verl.trainer.ppo.ray_trainer), on CPU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import METRIC_KEYS

from gtpo_plugin import compute_gtpo_advantage, compute_gtpo_terms, gtpo_metrics, mean_completion_entropy

verl = pytest.importorskip("verl")
from omegaconf import OmegaConf  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.trainer.ppo.core_algos import get_adv_estimator_fn  # noqa: E402
from verl.trainer.ppo.ray_trainer import compute_advantage  # noqa: E402

LN2 = math.log(2)


# CI runs it on verl 0.9.0 too (step 2): verl's compute_advantage and the estimator registry.
pytestmark = pytest.mark.verl_compat


def make_data(completions, uids, scores, entropies, *, with_entropy=True, with_responses=True) -> DataProto:
    """A right-padded DataProto as verl's trainers build it; the outcome reward sits on the last valid token."""
    width = max(len(c) for c in completions)
    responses = torch.tensor([c + [0] * (width - len(c)) for c in completions], dtype=torch.long)
    mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in completions], dtype=torch.long)
    rewards = torch.zeros(len(completions), width)
    for i, c in enumerate(completions):
        rewards[i, max(len(c) - 1, 0)] = scores[i]
    entropy = torch.tensor([e + [7.0] * (width - len(e)) for e in entropies])  # garbage on padding
    tensors = {"response_mask": mask, "token_level_rewards": rewards}
    if with_responses:
        tensors["responses"] = responses
    if with_entropy:
        tensors["entropy"] = entropy
    return DataProto.from_dict(tensors=tensors, non_tensors={"uid": np.array(uids, dtype=object)})


def random_data(seed: int, *, groups: int = 4, size: int = 5, vocab: int = 3, max_len: int = 7) -> DataProto:
    rng = np.random.default_rng(seed)
    completions, uids, scores, entropies = [], [], [], []
    for g in range(groups):
        for _ in range(size):
            length = int(rng.integers(1, max_len + 1))
            completions.append(rng.integers(1, vocab + 1, size=length).tolist())
            uids.append(f"uid-{g}")
            scores.append(float(rng.integers(0, 2)))
            entropies.append(rng.uniform(0.0, 1.2, size=length).tolist())
    order = rng.permutation(len(completions))
    return make_data(*([x[i] for i in order] for x in (completions, uids, scores, entropies)))


def algorithm(**gtpo) -> OmegaConf:
    return OmegaConf.create({"adv_estimator": "gtpo", "norm_adv_by_std_in_grpo": True, "gtpo": gtpo})


def test_hand_worked_group_of_two():
    # o1 = [5 7 9] reward 1, o2 = [5 8] reward 0. GRPO: mean 0.5, unbiased std 0.7071 -> A = ±0.7071.
    # Prefix: position 0 holds 5 in both (A>0 and A<0) -> conflict; position 1 differs -> runs of 1.
    # Suffix (right-aligned): last tokens 9 vs 8 -> no conflict. λ(o1) = [2 1 1], λ(o2) = [0 1].
    # Every token entropy 0.1 -> ⟨H⟩ = 0.1 ≤ ln 2, kept; a1 = 0.7071 − 0.01, a2 = −0.7071 − 0.01.
    data = make_data([[5, 7, 9], [5, 8]], ["g", "g"], [1.0, 0.0], [[0.1] * 3, [0.1] * 2])
    config = algorithm(initial_entropy=0.5)
    out = compute_advantage(data, adv_estimator="gtpo", config=config)
    a = 0.5 / math.sqrt(0.5)
    expected = torch.tensor([[2 * (a - 0.01), a - 0.01, a - 0.01], [0.0, -a - 0.01, 0.0]])
    torch.testing.assert_close(out.batch["advantages"], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.batch["returns"], expected, rtol=0, atol=1e-5)
    metrics = out.meta_info["gtpo_metrics"]
    assert set(metrics) == METRIC_KEYS
    assert metrics["gtpo/protected_token_frac"] == pytest.approx(1 / 5)  # o2's first token
    assert metrics["gtpo/amplified_token_frac"] == pytest.approx(1 / 5)  # o1's first token
    assert metrics["gtpo/filtered_completion_frac"] == 0.0
    assert metrics["gtpo/initial_entropy"] == 0.5


@pytest.mark.parametrize("mode", ["prefix_suffix", "any", "none"])
@pytest.mark.parametrize("norm", [True, False])
def test_matches_the_core_on_random_batches(mode, norm):
    for seed in range(3):
        data = random_data(seed)
        config = algorithm(conflict_mode=mode, amplification=3.0, entropy_coef=0.2, initial_entropy=0.3)
        config.norm_adv_by_std_in_grpo = norm
        expected, _ = compute_gtpo_advantage(
            data.batch["token_level_rewards"], data.batch["response_mask"], data.batch["responses"],
            data.non_tensor_batch["uid"], data.batch["entropy"], initial_entropy=0.3, amplification=3.0,
            entropy_coef=0.2, conflict_mode=mode, norm_adv_by_std=norm,
        )
        out = compute_advantage(data, adv_estimator="gtpo", config=config)
        torch.testing.assert_close(out.batch["advantages"], expected, rtol=0, atol=0)


@pytest.mark.parametrize("filter_off", [{"initial_entropy": math.inf}, {"entropy_threshold": math.inf}])
@pytest.mark.parametrize("norm", [True, False])
def test_reduces_to_verls_grpo_with_every_gtpo_term_off(norm, filter_off):
    # γ = 0, conflict mode none and the filter off (⟨H⟩_ini or τ infinite): GTPO is GRPO exactly (GTPO_SPEC).
    for seed in range(3):
        settings = {"entropy_coef": 0.0, "conflict_mode": "none", **filter_off}
        gtpo = compute_advantage(random_data(seed), adv_estimator="gtpo", norm_adv_by_std_in_grpo=norm,
                                 config=OmegaConf.create({"norm_adv_by_std_in_grpo": norm, "gtpo": settings}))
        grpo = compute_advantage(random_data(seed), adv_estimator="grpo", norm_adv_by_std_in_grpo=norm,
                                 config=OmegaConf.create({"norm_adv_by_std_in_grpo": norm}))
        torch.testing.assert_close(gtpo.batch["advantages"], grpo.batch["advantages"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("as_dict", [False, True])
def test_initial_entropy_is_measured_once_and_kept_in_the_config(as_dict):
    first, second = random_data(0), random_data(1)
    second.batch["entropy"] *= 3.0
    config = {"adv_estimator": "gtpo"} if as_dict else OmegaConf.create({"adv_estimator": "gtpo", "gtpo": {}})
    measured = mean_completion_entropy(first.batch["entropy"], first.batch["response_mask"])

    out = compute_advantage(first, adv_estimator="gtpo", config=config)
    assert config["gtpo"]["initial_entropy"] == pytest.approx(measured)
    assert out.meta_info["gtpo_metrics"]["gtpo/initial_entropy"] == pytest.approx(measured)

    out = compute_advantage(second, adv_estimator="gtpo", config=config)
    assert config["gtpo"]["initial_entropy"] == pytest.approx(measured)  # fixed: not re-measured
    terms = compute_gtpo_terms(
        second.batch["token_level_rewards"], second.batch["response_mask"], second.batch["responses"],
        second.non_tensor_batch["uid"], second.batch["entropy"], initial_entropy=measured,
    )
    torch.testing.assert_close(out.batch["advantages"], terms.advantages, rtol=0, atol=0)
    assert out.meta_info["gtpo_metrics"] == pytest.approx(gtpo_metrics(terms))


def test_empty_completions_do_not_count_in_the_initial_entropy():
    # verl pads a batch with rows whose response_mask is all 0 (padding_utils); they are not completions.
    data = make_data([[1, 2], [3], [4, 4]], ["a", "a", "pad"], [1.0, 0.0, 0.0], [[0.2, 0.4], [0.9], [5.0, 5.0]])
    data.batch["response_mask"][2] = 0
    config = algorithm()
    compute_advantage(data, adv_estimator="gtpo", config=config)
    assert config.gtpo.initial_entropy == pytest.approx((0.3 + 0.9) / 2)


@pytest.mark.parametrize("missing", ["entropy", "responses"])
def test_without_responses_or_entropy_it_raises_instead_of_computing_grpo(missing):
    data = make_data([[1, 2], [1]], ["a", "a"], [1.0, 0.0], [[0.1, 0.1], [0.1]],
                     with_entropy=missing != "entropy", with_responses=missing != "responses")
    with pytest.raises(RuntimeError, match="'responses'.*'entropy'"):
        compute_advantage(data, adv_estimator="gtpo", config=algorithm())


def test_registered_estimator_called_directly_names_what_is_missing():
    estimator = get_adv_estimator_fn("gtpo")
    with pytest.raises(RuntimeError, match="needs the batch's 'responses'.*and 'entropy'"):
        estimator(token_level_rewards=torch.zeros(2, 3), response_mask=torch.ones(2, 3),
                  index=np.array(["a", "a"], dtype=object), config=algorithm())


def test_misaligned_entropy_is_refused():
    data = make_data([[1, 2], [1]], ["a", "a"], [1.0, 0.0], [[0.1, 0.1], [0.1]])
    data.batch["entropy"] = data.batch["entropy"][:, :1].contiguous()
    with pytest.raises(ValueError, match="'entropy' has shape"):
        compute_advantage(data, adv_estimator="gtpo", config=algorithm())


@pytest.mark.parametrize(("gtpo", "message"), [
    ({"conflict_mode": "suffix"}, "conflict_mode must be one of"),
    ({"amplification": 0.5}, "amplification"),
    ({"entropy_coef": -1.0}, "entropy_coef"),
    ({"entropy_threshold": 0.0}, "entropy_threshold"),
    ({"initial_entropy": -0.1}, "initial_entropy"),
    ({"amplifcation": 2.0}, "unknown key"),
])
def test_bad_settings_raise_naming_the_key(gtpo, message):
    data = make_data([[1, 2], [1]], ["a", "a"], [1.0, 0.0], [[0.1, 0.1], [0.1]])
    with pytest.raises(ValueError, match=f"algorithm.gtpo.*{message}"):
        compute_advantage(data, adv_estimator="gtpo", config=algorithm(**gtpo))


def test_a_norm_flag_that_disagrees_with_the_config_is_refused():
    data = make_data([[1, 2], [1]], ["a", "a"], [1.0, 0.0], [[0.1, 0.1], [0.1]])
    with pytest.raises(ValueError, match="disagrees with the config's algorithm.norm_adv_by_std_in_grpo=True"):
        compute_advantage(data, adv_estimator="gtpo", norm_adv_by_std_in_grpo=False, config=algorithm())


def test_other_estimators_are_untouched():
    data = random_data(0)
    out = compute_advantage(data, adv_estimator="grpo", config=OmegaConf.create({}))
    assert "gtpo_metrics" not in out.meta_info
