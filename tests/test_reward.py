"""The recipes' rewards (one per preset) on hand-made completions, called directly and through verl's own loader."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gtpo_plugin.paper_reward import paper_reward
from gtpo_plugin.reward import compute_paper_score, compute_score

pytest.importorskip("math_verify")

RECIPE_CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "config"
GOOD = "<reasoning>\n48 / 2 = 24, and 48 + 24 = 72.\n</reasoning>\n<answer>\n72\n</answer>"


def score(completion: str, reference: object = "72", **kwargs: object) -> dict[str, float]:
    return compute_score("gsm8k", completion, reference, {"index": 0}, **kwargs)


@pytest.mark.parametrize(
    ("completion", "reference", "expected"),
    [
        (GOOD, "72", (1.0, 1.0, 1.0)),
        (GOOD.replace("72\n</answer>", "71\n</answer>"), "72", (0.0, 0.0, 1.0)),  # wrong answer
        ("<reasoning>sum</reasoning><answer>1,000</answer>", "1000", (1.0, 1.0, 1.0)),  # thousands separator
        ("<reasoning>half</reasoning><answer>\\frac{1}{2}</answer>", "0.5", (1.0, 1.0, 1.0)),  # LaTeX vs decimal
        ("<reasoning>r</reasoning><answer>$18</answer>", "18", (1.0, 1.0, 1.0)),
    ],
)
def test_well_formed_completions(completion, reference, expected):
    result = score(completion, reference)
    assert (result["score"], result["acc"], result["format"]) == expected


@pytest.mark.parametrize(
    "completion",
    [
        "48 + 24 = 72. The answer is 72.",  # no tag at all
        "<reasoning>48 + 24</reasoning>\n<answer>72",  # unclosed answer tag
        "<reasoning>48 + 24</reasoning>\n<answer>   </answer>",  # blank answer
        "<reasoning>48 + 24 = \\boxed{72}</reasoning>",  # boxed, but not in the tag
        "<reasoning>48 + 24</reasoning>\n<Answer>72</Answer>",  # tags are case sensitive
        "",
    ],
)
def test_malformed_completions_score_zero(completion):
    assert score(completion) == {"score": 0.0, "acc": 0.0, "format": 0.0}


def test_the_last_answer_block_counts():
    # A model that corrects itself ends with its final answer; two answer blocks are not well formed.
    assert score("<answer>70</answer> wait, no <answer>72</answer>") == {"score": 1.0, "acc": 1.0, "format": 0.0}
    assert score("<answer>72</answer> wait, no <answer>70</answer>")["acc"] == 0.0


def test_strict_format_needs_reasoning_then_answer():
    swapped = "<answer>72</answer>\n<reasoning>48 + 24</reasoning>"
    assert score(swapped) == {"score": 1.0, "acc": 1.0, "format": 0.0}
    assert score(swapped, strict_format=True) == {"score": 0.0, "acc": 1.0, "format": 0.0}
    assert score(GOOD, strict_format=True) == {"score": 1.0, "acc": 1.0, "format": 1.0}
    trailing = GOOD + "\nHope this helps!"  # text after the answer block breaks the format
    assert score(trailing, strict_format=True)["score"] == 0.0


@pytest.mark.parametrize(("reference", "answer"), [(72, "72"), (27.0, "27"), (0.25, "1/4")])
def test_numeric_references(reference, answer):
    assert score(f"<reasoning>r</reasoning><answer>{answer}</answer>", reference)["score"] == 1.0


@pytest.mark.parametrize("reference", [None, "", "  ", True, float("nan"), ["72"]])
def test_bad_reference_names_the_field(reference):
    with pytest.raises(ValueError, match="ground_truth"):
        score(GOOD, reference)


def test_completion_must_be_text():
    with pytest.raises(TypeError, match="solution_str"):
        compute_score("gsm8k", b"<answer>72</answer>", "72")  # type: ignore[arg-type]


def test_loaded_and_called_as_verl_does():
    # verl's loader resolves the recipes' setting, merges reward_kwargs, and its naive reward manager
    # calls the function with these keyword arguments.
    pytest.importorskip("verl")
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {
                    "path": "pkg://gtpo_plugin.reward",
                    "name": "compute_score",
                    "reward_kwargs": {"strict_format": True},
                }
            }
        }
    )
    reward_fn = get_custom_reward_fn(config)
    assert reward_fn is not None
    call = {"data_source": "math", "ground_truth": "\\frac{3}{4}", "extra_info": {"split": "test"}}
    assert reward_fn(solution_str="<reasoning>r</reasoning><answer>0.75</answer>", **call)["score"] == 1.0
    assert reward_fn(solution_str="<answer>0.75</answer>", **call) == {"score": 0.0, "acc": 1.0, "format": 0.0}


# The authors' reward (preset paper): format up to 10 plus correctness 10, next to the evaluation's acc and format.
@pytest.mark.parametrize(
    ("completion", "reference", "expected"),
    [
        # (score, acc, format, format_reward, correctness_reward)
        (GOOD, "72", (20.0, 1.0, 1.0, 10.0, 10.0)),  # both blocks, right answer: 10 + 10
        (GOOD.replace("72\n</answer>", "71\n</answer>"), "72", (10.0, 0.0, 1.0, 10.0, 0.0)),  # format only
        (GOOD + "\nHope this helps!", "72", (1.5, 1.0, 0.0, 1.5, 0.0)),  # does not end with the answer block:
        # the reasoning block earns 1.5 (answer tags appear), no correctness; math-verify still reads 72
        ("<reasoning>48 + 24</reasoning> so 72", "72", (1.0, 0.0, 0.0, 1.0, 0.0)),  # reasoning block alone
        ("<answer>72</answer>", "72", (1.0, 1.0, 0.0, 1.0, 0.0)),  # answer block alone: right, but no 10
        ("<reasoning>48 + 24 <answer>72</answer>", "72", (1.5, 1.0, 0.0, 1.5, 0.0)),  # unclosed reasoning
        ("The answer is 72.", "72", (0.0, 0.0, 0.0, 0.0, 0.0)),
        # The authors' match: within 0.01, or the reference contained in the answer; math-verify differs.
        ("<reasoning>r</reasoning><answer>72.004</answer>", "72", (20.0, 0.0, 1.0, 10.0, 10.0)),
        ("<reasoning>r</reasoning><answer>72 apples</answer>", "72", (20.0, 1.0, 1.0, 10.0, 10.0)),
        ("<reasoning>r</reasoning><answer>1,000</answer>", "1000", (10.0, 1.0, 1.0, 10.0, 0.0)),
    ],
)
def test_paper_score(completion, reference, expected):
    result = compute_paper_score("gsm8k", completion, reference, {"index": 0})
    assert list(result) == ["score", "acc", "format", "format_reward", "correctness_reward"]
    assert tuple(result.values()) == expected
    assert result["score"] == paper_reward(completion, reference).total


@pytest.mark.parametrize(("reference", "answer"), [(72, "72"), (27.0, "27"), (np.int64(5), "5.0")])
def test_paper_score_numeric_references(reference, answer):
    completion = f"<reasoning>r</reasoning><answer>{answer}</answer>"
    assert compute_paper_score("math", completion, reference)["score"] == 20.0


@pytest.mark.parametrize("reference", [None, "", True, float("inf")])
def test_paper_score_bad_reference_names_the_field(reference):
    with pytest.raises(ValueError, match=r"ground_truth \(reward_model.ground_truth of a 'gsm8k' row\)"):
        compute_paper_score("gsm8k", GOOD, reference)
    with pytest.raises(TypeError, match="solution_str"):
        compute_paper_score("gsm8k", None, "72")  # type: ignore[arg-type]


def byte_tokenizer(folder: Path):
    """A byte-level tokenizer saved as a transformers folder: decodes every text exactly, nothing downloaded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={"<pad>": 0, **{ch: i + 1 for i, ch in enumerate(alphabet)}}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>")
    fast.save_pretrained(folder)
    return fast


@pytest.mark.parametrize(("preset", "scores"), [("paper", [20.0, 10.0, 1.5, 0.0]), ("verl", [1.0, 0.0, 1.0, 0.0])])
def test_preset_reward_through_verls_reward_loop(tmp_path, preset, scores):
    # The recipes' config for this preset, composed by Hydra from recipes/config/ on verl's ppo_trainer; verl's
    # reward-loop worker loads the reward from it (load_reward_manager -> naive manager -> our function), decodes
    # a right-padded batch with a real tokenizer, and assembles rm_scores at each completion's last token.
    pytest.importorskip("verl")
    from hydra import compose, initialize_config_dir
    from verl import DataProto
    from verl.experimental.reward_loop import RewardLoopWorker

    tokenizer = byte_tokenizer(tmp_path / "tokenizer")
    with initialize_config_dir(config_dir=str(RECIPE_CONFIG), version_base=None):
        overrides = [f"preset={preset}", f"actor_rollout_ref.model.path={tmp_path / 'tokenizer'}"]
        config = compose("gtpo", overrides=overrides)
    worker = RewardLoopWorker(config)
    completions = [GOOD, GOOD.replace("72\n</answer>", "71\n</answer>"), GOOD + "\nHope this helps!", "72"]
    encoded = [tokenizer(text)["input_ids"] for text in completions]
    prompt_length, response_length = 3, max(map(len, encoded)) + 5
    responses = torch.zeros(len(encoded), response_length, dtype=torch.long)
    attention_mask = torch.zeros(len(encoded), prompt_length + response_length, dtype=torch.long)
    attention_mask[:, :prompt_length] = 1
    for row, ids in enumerate(encoded):
        responses[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, prompt_length : prompt_length + len(ids)] = 1
    data = DataProto.from_dict(
        tensors={"prompts": torch.ones(len(encoded), prompt_length, dtype=torch.long), "responses": responses,
                 "attention_mask": attention_mask},
        non_tensors={"data_source": np.array(["gsm8k"] * len(encoded), dtype=object),
                     "reward_model": np.array([{"ground_truth": "72"}] * len(encoded), dtype=object)},
    )
    outputs = worker.loop.run_until_complete(worker.compute_score_batch(data))
    assert [output["reward_score"] for output in outputs] == scores
    assert [output["reward_extra_info"]["acc"] for output in outputs] == [1.0, 0.0, 1.0, 0.0]  # same in both presets
    extra_keys = {"score", "acc", "format"} | ({"format_reward", "correctness_reward"} if preset == "paper" else set())
    assert all(set(output["reward_extra_info"]) == extra_keys for output in outputs)
    rm_scores = type(worker.reward_manager).assemble_rm_scores(data, scores)
    lengths = torch.tensor([len(ids) for ids in encoded])
    assert torch.equal(rm_scores.nonzero()[:, 1], (lengths - 1)[torch.tensor(scores) != 0])
    assert rm_scores.sum(-1).tolist() == scores


def test_advantage_scales_of_the_presets():
    # The README's arithmetic for gamma, through verl's own GRPO estimator: in a group of 8 well-formatted
    # completions with k right, the paper preset (reward 10 + 10 r, A = R - mean) gives advantages 10 s times
    # those of the verl preset (reward r, A = (r - mean) / (s + 1e-6)), s = sqrt(8 p (1 - p) / 7), p = k / 8:
    # 10 s = 3.536 (k = 1 or 7) ... 5.345 (k = 4). gamma 0.1 -> 0.02 then keeps gamma <H> / |A| at
    # 0.2 * 10 s = 0.71 ... 1.07 times the paper preset's.
    pytest.importorskip("verl")
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    wrong = GOOD.replace("72\n</answer>", "71\n</answer>")
    ratios = []
    for k in range(1, 8):
        completions = [GOOD] * k + [wrong] * (8 - k)
        advantages = {}
        for preset, function, norm in (("paper", compute_paper_score, False), ("verl", compute_score, True)):
            rewards = torch.tensor([[function("gsm8k", text, "72")["score"]] for text in completions])
            advantages[preset], _ = compute_grpo_outcome_advantage(
                rewards, torch.ones_like(rewards), np.array(["q"] * 8, dtype=object), norm_adv_by_std_in_grpo=norm)
        assert sorted(set(advantages["paper"].flatten().tolist())) == pytest.approx([-10 * k / 8, 10 - 10 * k / 8])
        ratio = advantages["paper"] / advantages["verl"]
        s = math.sqrt(8 * (k / 8) * (1 - k / 8) / 7)
        assert ratio.flatten().tolist() == pytest.approx([10 * s] * 8, rel=1e-5)
        ratios.append(10 * s)
    assert (min(ratios), max(ratios)) == pytest.approx((3.5355, 5.3452), abs=1e-4)
    assert (0.02 / 0.1 * min(ratios), 0.02 / 0.1 * max(ratios)) == pytest.approx((0.7071, 1.0690), abs=1e-4)
