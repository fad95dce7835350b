"""The synthetic task: add four to six digits, writing every step of the running sum, answer between format tags.

A prompt reads ``<bos> 3 + 5 + 4 + 2 =`` (four to six digits 1..5) and a well-formed completion
writes each addition of the running sum as a step, steps separated by ``,``, then the answer:

    <r> 3 + 5 = 8 , 4 + 8 = 12 , + 2 = 14 </r> <a> 14 </a> <eos>

Each step comes in one of three equivalent forms, chosen freely: ``s + x = t`` (running sum first),
``x + s = t`` (operand first) or ``+ x = t`` (running sum implied). Completions are 20–35 tokens,
and two completions of a group usually part ways within the first steps, as sampled reasoning
does; so the tokens that right and wrong completions share at the same place from the start or
the end (GTPO's conflict tokens: ``<r>``, ``</a> <eos>``, a common opening) are a minority. The
reward is computed on the completion's text with the GTPO authors' rules
(:mod:`gtpo_plugin.paper_reward`) under the short tags ``<r>``/``</r>``/``<a>``/``</a>``; see
:func:`grade`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gtpo_plugin.demo.vocab import Vocab
from gtpo_plugin.paper_reward import FormatTags, extract_answer, format_reward

MIN_OPERANDS = 4
MAX_OPERANDS = 6
# The harder problems of the negative-heavy regime go up to 7 operands (sums up to 35); the vocabulary
# holds numbers up to max_number() = 40, which leaves room for wrong sums.
LONGEST_PROBLEM = 7
MIN_DIGIT = 1
MAX_DIGIT = 5
STEP_FORMS = ("sum_first", "operand_first", "implied")
DEMO_TAGS = FormatTags("<r>", "</r>", "<a>", "</a>")
FORMAT_TAG_TOKENS = [DEMO_TAGS.reasoning_open, DEMO_TAGS.reasoning_close, DEMO_TAGS.answer_open, DEMO_TAGS.answer_close]
FULL_FORMAT = 10.0
CORRECT = 10.0


@dataclass(frozen=True)
class Problem:
    """One prompt: the operands to add, in order."""

    operands: tuple[int, ...]

    @property
    def answer(self) -> int:
        return sum(self.operands)

    def running_sums(self) -> list[int]:
        """The partial sums after the second, third, ... operand (one per reasoning step)."""
        sums, total = [], self.operands[0]
        for operand in self.operands[1:]:
            total += operand
            sums.append(total)
        return sums

    def prompt_tokens(self) -> list[str]:
        tokens = ["<bos>"]
        for position, operand in enumerate(self.operands):
            if position:
                tokens.append("+")
            tokens.append(str(operand))
        return [*tokens, "="]


def check_operand_range(min_operands: int, max_operands: int) -> None:
    """Problems need 2 to ``LONGEST_PROBLEM`` operands, so that every sum has a token in the vocabulary."""
    if not 2 <= min_operands <= max_operands <= LONGEST_PROBLEM:
        raise ValueError(f"operand counts must satisfy 2 <= min_operands <= max_operands <= {LONGEST_PROBLEM}, "
                         f"got min_operands={min_operands}, max_operands={max_operands}")


def sample_problems(count: int, generator: torch.Generator, min_operands: int = MIN_OPERANDS,
                    max_operands: int = MAX_OPERANDS) -> list[Problem]:
    """``count`` problems with ``min_operands`` to ``max_operands`` (4 to 6) digits in 1..5, drawn from
    ``generator`` (reproducible; the default range draws exactly what it always drew)."""
    check_operand_range(min_operands, max_operands)
    n_operands = torch.randint(min_operands, max_operands + 1, (count,), generator=generator)
    digits = torch.randint(MIN_DIGIT, MAX_DIGIT + 1, (count, max_operands), generator=generator)
    return [Problem(tuple(int(d) for d in digits[i, : int(n_operands[i])])) for i in range(count)]


def step_tokens(form: str, running: int, operand: int, result: int) -> list[str]:
    """One reasoning step in the given form (``STEP_FORMS``)."""
    if form == "sum_first":
        return [str(running), "+", str(operand), "=", str(result)]
    if form == "operand_first":
        return [str(operand), "+", str(running), "=", str(result)]
    if form == "implied":
        return ["+", str(operand), "=", str(result)]
    raise ValueError(f"step form must be one of {STEP_FORMS}, got {form!r}")


def completion_tokens(problem: Problem, written: Sequence[int], forms: Sequence[str]) -> list[str]:
    """The well-formed completion whose steps write the sums ``written`` in ``forms``; answer = last sum."""
    if len(written) != len(problem.operands) - 1 or len(forms) != len(written):
        raise ValueError(f"need one written sum and one form per step ({len(problem.operands) - 1}), "
                         f"got {len(written)} sums and {len(forms)} forms")
    tokens = ["<r>"]
    running = problem.operands[0]
    for index, (operand, result, form) in enumerate(zip(problem.operands[1:], written, forms, strict=True)):
        if index:
            tokens.append(",")
        tokens.extend(step_tokens(form, running, operand, result))
        running = result
    return [*tokens, "</r>", "<a>", str(written[-1]), "</a>", "<eos>"]


def max_number() -> int:
    """Largest number a completion may need a token for: the largest sum, plus room for wrong sums."""
    return MAX_OPERANDS * MAX_DIGIT + 10


def noisy_demonstration(problem: Problem, generator: torch.Generator, noise: float,
                        forms: Sequence[str] = STEP_FORMS) -> list[str]:
    """A warm-up target: step forms drawn from ``forms``; each step's sum off by 1 or 2 with probability ``noise``.

    A wrong step carries into the following ones (they add to the written sum) and the answer copies
    the last written sum, so the warm-up teaches the format, the forms and the copy rules firmly but
    the arithmetic only roughly; reinforcement learning has to sharpen it.
    """
    if not forms or any(form not in STEP_FORMS for form in forms):
        raise ValueError(f"forms must be a non-empty selection of {STEP_FORMS}, got {list(forms)}")
    written: list[int] = []
    chosen: list[str] = []
    running = problem.operands[0]
    for operand in problem.operands[1:]:
        value = running + operand
        if float(torch.rand((), generator=generator)) < noise:
            offset = int(torch.randint(1, 3, (), generator=generator))
            value += offset if float(torch.rand((), generator=generator)) < 0.5 else -offset
            value = min(max(value, 0), max_number())
        chosen.append(forms[int(torch.randint(0, len(forms), (), generator=generator))])
        written.append(value)
        running = value
    return completion_tokens(problem, written, chosen)


@dataclass(frozen=True)
class Grade:
    """How one completion scored under the authors' rules (format reward, and whether the answer is right)."""

    format_reward: float
    correct: bool

    @property
    def well_formed(self) -> bool:
        """The full format reward: a reasoning block, and the completion ends with an answer block."""
        return self.format_reward == FULL_FORMAT

    def reward(self, kind: str) -> float:
        """``paper``: format + 10 if correct (0–20). ``correctness``: 1 if correct, else 0."""
        if kind == "paper":
            return self.format_reward + (CORRECT if self.correct else 0.0)
        if kind == "correctness":
            return 1.0 if self.correct else 0.0
        raise ValueError(f"reward kind must be 'paper' or 'correctness', got {kind!r}")


def completion_text(tokens: Sequence[str]) -> str:
    """The completion as text: tokens joined by spaces, the final ``<eos>`` (a stop token) left out."""
    body = list(tokens[:-1]) if tokens and tokens[-1] == "<eos>" else list(tokens)
    return " ".join(body)


def grade(tokens: Sequence[str], problem: Problem) -> Grade:
    """Score a completion with the authors' format rules; correct = full format and answer equal to the sum.

    Correctness is exact equality of the answer with the true sum. The authors' rule (within 0.01, or
    the reference contained in the answer) would, with one-number answers, accept ``14`` for 4: a
    reward the policy could learn to exploit. Everything else follows
    :func:`gtpo_plugin.paper_reward.format_reward`.
    """
    text = completion_text(tokens)
    fmt = format_reward(text, DEMO_TAGS)
    correct = fmt == FULL_FORMAT and extract_answer(text, DEMO_TAGS) == str(problem.answer)
    return Grade(format_reward=fmt, correct=correct)


def build_vocab() -> Vocab:
    """The task's vocabulary: specials, format tags, ``+``/``=``/``,`` and the numbers 0..40 as single tokens."""
    numbers = [str(n) for n in range(max_number() + 1)]
    return Vocab(["<pad>", "<bos>", "<eos>", "<r>", "</r>", "<a>", "</a>", "+", "=", ",", *numbers])
