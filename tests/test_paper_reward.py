"""The authors' reward (format + correctness) on hand-made completions, with the paper's and the demo's tags."""

from __future__ import annotations

import random

import pytest

from gtpo_plugin.paper_reward import (
    PAPER_TAGS,
    FormatTags,
    PaperReward,
    answer_matches,
    extract_answer,
    format_reward,
    paper_reward,
)

DEMO_TAGS = FormatTags("<r>", "</r>", "<a>", "</a>")
GOOD = "<reasoning>\n48 / 2 = 24, and 48 + 24 = 72.\n</reasoning>\n<answer>\n72\n</answer>"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # neither block: 0
        ("48 + 24 = 72", 0.0),
        ("<reasoning> 48 + 24 <answer> 72", 0.0),  # only opening tags: no block at all
        ("<answer>72</answer> and more", 0.0),  # answer block not at the end, no reasoning block
        # reasoning block alone, no answer tag anywhere: 1
        ("<reasoning>48 + 24</reasoning> so 72", 1.0),
        # reasoning block alone, an answer tag appears partially: 1.5
        ("<reasoning>48 + 24</reasoning><answer>72", 1.5),
        ("<reasoning>48 + 24</reasoning><answer>72</answer> trailing words", 1.5),  # answer block not last
        # answer block at the end alone: 1; with a stray reasoning tag: 1.5
        ("72 <answer>72</answer>", 1.0),
        ("<reasoning> 48 + 24 <answer>72</answer>", 1.5),
        ("48 + 24 </reasoning><answer>72</answer>", 1.5),
        # both blocks, answer last (trailing whitespace allowed): 10
        (GOOD, 10.0),
        (GOOD + "\n\n  ", 10.0),
        ("<answer>1</answer><reasoning>r</reasoning><answer>2</answer>", 10.0),
    ],
)
def test_format_reward_hand_made(text, expected):
    assert format_reward(text) == expected


@pytest.mark.parametrize(
    ("text", "reference", "total"),
    [
        ("no tags, 72", "72", 0.0),
        ("<reasoning>r</reasoning> 72", "72", 1.0),  # right number, but only partial format: no correctness
        ("<reasoning>r</reasoning><answer>72", "72", 1.5),
        (GOOD, "71", 10.0),  # full format, wrong answer
        (GOOD, "72", 20.0),
        (GOOD.replace("72\n</answer>", "72.004\n</answer>"), "72", 20.0),  # within 0.01
        (GOOD.replace("72\n</answer>", "The answer is 72 apples\n</answer>"), "72", 20.0),  # contains reference
    ],
)
def test_paper_reward_totals(text, reference, total):
    reward = paper_reward(text, reference)
    assert reward.total == total
    assert reward.correctness in (0.0, 10.0)
    assert reward.total == reward.format + reward.correctness


def test_reachable_values_on_random_texts():
    # Both blocks present is the full 10, so the spec's 2, 2.5 and 3 cannot occur under the authors' rules.
    pieces = ["<reasoning>", "</reasoning>", "<answer>", "</answer>", "7", " x ", "\n"]
    rng = random.Random(0)
    seen = set()
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        seen.add(paper_reward(text, "7").total)
    assert seen == {0.0, 1.0, 1.5, 10.0, 20.0}


def test_demo_tags():
    good = "<r> 3 + 4 = 7 , 7 + 5 = 12 </r> <a> 12 </a>"
    assert paper_reward(good, "12", DEMO_TAGS) == PaperReward(10.0, 10.0)
    assert paper_reward(good, "13", DEMO_TAGS) == PaperReward(10.0, 0.0)
    assert paper_reward("<r> 3 + 4 </r> <a> 12", "12", DEMO_TAGS).total == 1.5
    assert paper_reward("<r> 3 + 4 </r> 12", "12", DEMO_TAGS).total == 1.0
    assert paper_reward("<a> 12 </a>", "12", DEMO_TAGS).total == 1.0
    # the paper's tags mean nothing under the demo's, and the reverse
    assert format_reward(GOOD, DEMO_TAGS) == 0.0
    assert format_reward(good) == 0.0
    assert extract_answer(good, DEMO_TAGS) == "12"


def test_extract_answer():
    assert extract_answer(GOOD) == "72"
    assert extract_answer("<answer> 1 </answer> <answer> 2 </answer>\n") == "2"  # the last block
    assert extract_answer("<answer>72</answer> and more") is None
    assert extract_answer("72</answer>") is None
    assert extract_answer("<answer></answer>") == ""
    assert PAPER_TAGS.answer_open == "<answer>"


@pytest.mark.parametrize(
    ("answer", "reference", "expected"),
    [
        ("72", "72", True),
        ("72.0", "72", True),
        ("72.01", "72", True),  # exactly 0.01 away
        ("71.98", "72", False),  # 0.02 away, and "72" is not in "71.98"
        ("72.02", "72", True),  # 0.02 away, but "72" is in "72.02" (containment, as in the authors' code)
        ("-3.5", "-3.49", True),
        ("1e2", "100", True),
        ("about 72 apples", "72", True),  # contains the reference
        ("720", "72", True),  # containment is literal, as in the authors' code
        ("7", "72", False),
        ("", "72", False),
        (None, "72", False),
        ("x = 1/2", "1/2", True),
        ("0.5", "1/2", False),  # no fraction arithmetic
    ],
)
def test_answer_matches(answer, reference, expected):
    assert answer_matches(answer, reference) is expected


@pytest.mark.parametrize("reference", ["", "   ", None, 72])
def test_bad_reference_is_refused(reference):
    with pytest.raises(ValueError, match="reference must be a non-blank string"):
        paper_reward(GOOD, reference)


def test_bad_inputs():
    with pytest.raises(TypeError, match="text must be the decoded completion"):
        format_reward(b"<answer>1</answer>")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="FormatTags.answer_open must be a non-blank string"):
        FormatTags(answer_open=" ")
    with pytest.raises(ValueError, match="four different tags"):
        FormatTags("<r>", "</r>", "<r>", "</a>")
