"""Answer extraction, format checking and equivalence on hand-made completions."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from gtpo_plugin.evaluation import answers_match, extract_answer, is_well_formatted, normalize_answer
from gtpo_plugin.evaluation.answers import MAX_ANSWER_CHARS


def formatted(answer: str, reasoning: str = "Add the two numbers.") -> str:
    return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>\n"


# --- extract_answer -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (formatted("42"), "42"),
        ("<answer> \\frac{1}{2} </answer>", "\\frac{1}{2}"),
        # several blocks: the last one counts (the model's final word)
        ("<answer>3</answer> wait, no <answer>4</answer>", "4"),
        # an unclosed opening tag before a complete block does not swallow it
        ("<answer> <answer>5</answer>", "5"),
        ("<answer>\n7\n</answer> trailing text", "7"),
        # malformed or missing
        ("The answer is 42.", None),
        ("<answer>42", None),
        ("42</answer>", None),
        ("<answer>   </answer>", None),
        ("<answer>5</answer><answer></answer>", None),
        ("", None),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


def test_extract_answer_rejects_non_strings():
    with pytest.raises(TypeError, match="completion must be a str"):
        extract_answer(None)  # type: ignore[arg-type]


# --- is_well_formatted --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (formatted("42"), True),
        ("<reasoning>r</reasoning><answer>42</answer>", True),
        ("  \n<reasoning>r</reasoning>\n\n<answer>42</answer>\n", True),
        # wrong order, missing or repeated blocks
        ("<answer>42</answer><reasoning>r</reasoning>", False),
        ("<answer>42</answer>", False),
        ("<reasoning>r</reasoning>", False),
        ("<reasoning>r</reasoning><answer>4</answer><answer>2</answer>", False),
        ("<reasoning>a</reasoning><reasoning>b</reasoning><answer>2</answer>", False),
        ("<reasoning>r<answer>1</answer></reasoning><answer>2</answer>", False),
        # text outside the blocks, blank blocks, unclosed tags
        ("Sure! <reasoning>r</reasoning><answer>42</answer>", False),
        ("<reasoning>r</reasoning><answer>42</answer> Hope this helps.", False),
        ("<reasoning> </reasoning><answer>42</answer>", False),
        ("<reasoning>r</reasoning><answer> </answer>", False),
        ("<reasoning>r</reasoning><answer>42", False),
        ("", False),
    ],
)
def test_is_well_formatted(completion, expected):
    assert is_well_formatted(completion) is expected


# --- answers_match ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("predicted", "reference"),
    [
        ("42", "42"),
        ("1,000", "1000"),
        ("1000", "1,000"),
        ("1 000", "1000"),
        ("12,345,678", "12345678"),
        ("\\frac{1}{2}", "0.5"),
        ("0.5", "\\frac{1}{2}"),
        ("\\dfrac{1}{2}", "1/2"),
        ("\\frac12", "0.5"),
        ("\\boxed{7}", "7"),
        ("$18", "18"),
        ("\\$18", "18"),
        ("18 dollars", "18"),
        ("72.", "72"),
        ("\u22123", "-3"),  # Unicode minus sign
        ("3.0", "3"),
        ("x = 5", "5"),
        ("3\\sqrt{2}", "\\sqrt{18}"),
        ("2^{1/2}", "\\sqrt{2}"),
        ("\\text{(B)}", "B"),
    ],
)
def test_answers_match_equal_answers(predicted, reference):
    assert answers_match(predicted, reference)


@pytest.mark.parametrize(
    ("predicted", "reference"),
    [
        ("41", "42"),
        ("1000", "100"),
        ("\\frac{1}{3}", "0.5"),
        ("2^{1/2}", "2"),  # not read as "2"
        ("-3", "3"),
        ("\\text{(A)}", "B"),
        (None, "42"),
        ("", "42"),
    ],
)
def test_answers_match_different_answers(predicted, reference):
    assert not answers_match(predicted, reference)


def test_answers_match_on_extracted_answers():
    assert answers_match(extract_answer(formatted("\\frac{3}{4}")), "0.75")
    assert not answers_match(extract_answer("I think it is 0.75"), "0.75")  # no answer tag


def test_answers_match_works_off_the_main_thread():
    # math-verify's alarm cannot be set off the main thread; the check must still run there.
    results: list[bool] = []
    errors: list[BaseException] = []

    def check() -> None:
        try:
            results.append(answers_match("\\frac{1}{2}", "0.5"))
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            errors.append(error)

    worker = threading.Thread(target=check)
    worker.start()
    worker.join()
    assert errors == []
    assert results == [True]


def test_overlong_answers_are_compared_as_strings():
    long_number = "1" * (MAX_ANSWER_CHARS + 1)
    assert answers_match(long_number, long_number)
    assert not answers_match(long_number, long_number[:-1] + "2")


def test_answers_match_type_errors():
    with pytest.raises(TypeError, match="reference must be a str"):
        answers_match("1", 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="predicted must be a str or None"):
        answers_match(1, "1")  # type: ignore[arg-type]


# --- normalize_answer ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variants", "key"),
    [
        (["1000", "1,000", "1000.0", "\\boxed{1000}", "$1,000"], "1000"),
        (["\\frac{1}{2}", "\\dfrac{2}{4}", "0.5", "1/2"], "1/2"),
        (["-\\frac{3}{4}", "-0.75", "\u22120.75"], "-3/4"),
        (["5", "x = 5"], "5"),
    ],
)
def test_normalize_answer_gives_one_key_per_value(variants, key):
    assert {normalize_answer(variant) for variant in variants} == {key}


def test_normalize_answer_separates_different_values():
    keys = [normalize_answer(answer) for answer in ["1", "2", "\\frac{1}{3}", "\\sqrt{2}", "x+1"]]
    assert len(set(keys)) == len(keys)


def test_normalize_answer_falls_back_to_strings():
    assert normalize_answer("\\text{ Blue }") == normalize_answer("blue")


def test_import_without_math_verify_and_clear_error_on_use():
    # A blocked import stands for an environment without the "eval" extra.
    code = (
        "import sys; sys.modules['math_verify'] = None\n"
        "from gtpo_plugin.evaluation import answers_match, extract_answer, is_well_formatted\n"
        "assert extract_answer('<answer>3</answer>') == '3'\n"
        "assert is_well_formatted('<reasoning>r</reasoning><answer>3</answer>')\n"
        "try:\n"
        "    answers_match('3', '3')\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'gtpo-plugin[eval]'" in result.stdout
