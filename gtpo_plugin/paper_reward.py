"""The GTPO authors' reward on text: format reward (up to 10) plus correctness reward (10).

The rules are those of the authors' public training code (``reward_math.py`` of
github.com/winstonsmith1897/GTPO), re-expressed here with plain string operations:

- **Format.** 10 when the completion holds a reasoning block (an opening tag followed later by a
  closing tag) *and* ends with an answer block (the text, trailing whitespace aside, ends with the
  closing answer tag and an opening answer tag precedes it). Otherwise partial credit, summed over
  the two blocks: a reasoning block alone earns 1, or 1.5 when an answer tag (opening or closing)
  also appears somewhere; an answer block at the end alone earns 1, or 1.5 when a reasoning tag
  appears. A completion with neither earns 0.
- **Correctness.** 10 when the format reward is the full 10 and the answer matches the reference
  (:func:`answer_matches`), else 0.

Reachable totals are therefore {0, 1, 1.5, 10, 20}. The spec's summary lists {0, 1, 1.5, 2, 2.5, 3,
10, 20}; 2, 2.5 and 3 would need both blocks' partial credits at once, but both blocks present is
the full 10, so under the authors' rules they never occur (the tests check this on random texts).

Two readings that the authors' regular expressions leave to chance are fixed here: any trailing
whitespace after the closing answer tag is allowed (theirs allows one final newline), and with
several answer blocks the answer is the content of the last one (theirs starts at the first
opening tag). Framework-free: no verl, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "PAPER_TAGS",
    "FormatTags",
    "PaperReward",
    "answer_matches",
    "extract_answer",
    "format_reward",
    "paper_reward",
]

FULL_FORMAT = 10.0
CORRECT = 10.0
NUMERIC_TOLERANCE = 0.01


@dataclass(frozen=True)
class FormatTags:
    """The four tags of the format; the demo uses short ones (``FormatTags("<r>", "</r>", "<a>", "</a>")``)."""

    reasoning_open: str = "<reasoning>"
    reasoning_close: str = "</reasoning>"
    answer_open: str = "<answer>"
    answer_close: str = "</answer>"

    def __post_init__(self) -> None:
        for name in ("reasoning_open", "reasoning_close", "answer_open", "answer_close"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"FormatTags.{name} must be a non-blank string, got {value!r}")
        if len({self.reasoning_open, self.reasoning_close, self.answer_open, self.answer_close}) != 4:
            raise ValueError(f"FormatTags must be four different tags, got {self}")


PAPER_TAGS = FormatTags()


@dataclass(frozen=True)
class PaperReward:
    """One completion's reward in two parts; ``total`` is what the policy is trained on."""

    format: float
    correctness: float

    @property
    def total(self) -> float:
        return self.format + self.correctness


def _check_text(text: object, name: str = "text") -> str:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be the decoded completion (str), got {type(text).__name__}")
    return text


def _check_reference(reference: object) -> str:
    if not isinstance(reference, str) or not reference.strip():
        raise ValueError(f"reference must be a non-blank string, got {reference!r}")
    return reference


def _has_reasoning_block(text: str, tags: FormatTags) -> bool:
    start = text.find(tags.reasoning_open)
    return start >= 0 and text.find(tags.reasoning_close, start + len(tags.reasoning_open)) >= 0


def _final_answer_span(text: str, tags: FormatTags) -> tuple[int, int] | None:
    """(start, end) of the last answer block's content when the text ends with an answer block."""
    body = text.rstrip()
    if not body.endswith(tags.answer_close):
        return None
    end = len(body) - len(tags.answer_close)
    opening = body.rfind(tags.answer_open, 0, end)
    if opening < 0:
        return None
    return opening + len(tags.answer_open), end


def format_reward(text: str, tags: FormatTags = PAPER_TAGS) -> float:
    """Format reward of one completion: 10, or the summed partial credit 0, 1 or 1.5 (module docstring)."""
    text = _check_text(text)
    has_reasoning = _has_reasoning_block(text, tags)
    has_answer = _final_answer_span(text, tags) is not None
    if has_reasoning and has_answer:
        return FULL_FORMAT
    credit = 0.0
    if has_reasoning:
        credit += 1.5 if (tags.answer_open in text or tags.answer_close in text) else 1.0
    if has_answer:
        credit += 1.5 if (tags.reasoning_open in text or tags.reasoning_close in text) else 1.0
    return credit


def extract_answer(text: str, tags: FormatTags = PAPER_TAGS) -> str | None:
    """The stripped content of the answer block that ends the completion, or None when it does not end with one."""
    text = _check_text(text)
    span = _final_answer_span(text, tags)
    return None if span is None else text[span[0] : span[1]].strip()


def _as_number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def answer_matches(answer: str | None, reference: str) -> bool:
    """Whether an extracted answer counts as correct: numerically within 0.01, or containing the reference.

    Both sides are stripped. ``None`` (no answer) never matches. The reference must be a non-blank
    string, since a blank one would be "contained" in every answer.
    """
    _check_reference(reference)
    if answer is None:
        return False
    if not isinstance(answer, str):
        raise TypeError(f"answer must be a str or None, got {type(answer).__name__}")
    answer, reference = answer.strip(), reference.strip()
    answer_value, reference_value = _as_number(answer), _as_number(reference)
    # 1e-9 absorbs binary rounding so that e.g. 1.01 vs 1.00 counts as within 0.01.
    if (
        answer_value is not None
        and reference_value is not None
        and abs(answer_value - reference_value) <= NUMERIC_TOLERANCE + 1e-9
    ):
        return True
    return reference in answer


def paper_reward(text: str, reference: str, tags: FormatTags = PAPER_TAGS) -> PaperReward:
    """The authors' reward of one completion; correctness counts only with the full format reward."""
    _check_reference(reference)
    fmt = format_reward(text, tags)
    correct = fmt == FULL_FORMAT and answer_matches(extract_answer(text, tags), reference)
    return PaperReward(format=fmt, correctness=CORRECT if correct else 0.0)
