"""The recipes' reward on hand-made completions, called directly and through verl's own loader."""

from __future__ import annotations

import pytest

from gtpo_plugin.reward import compute_score

pytest.importorskip("math_verify")

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
