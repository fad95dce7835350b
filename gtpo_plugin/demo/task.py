"""The synthetic task: add two or three digits, reasoning by running sums, answer between format tags.

A prompt reads ``<bos> 3 + 5 + 7 =`` and a well-formed completion

    <r> 8 15 </r> <a> 15 </a> <eos>

writes the running sums between ``<r>``/``</r>`` and the final sum between ``<a>``/``</a>``. Every
completion of a group therefore opens with ``<r>`` and closes with ``</a> <eos>`` whether its answer
is right or wrong: the shared format tokens whose updates GTPO protects (GTPO_SPEC, "λ").
Reward (outcome only): 1 for a well-formed completion whose answer is the true sum, else 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gtpo_plugin.demo.vocab import Vocab

MIN_OPERANDS = 2
MAX_OPERANDS = 3
MAX_DIGIT = 9


@dataclass(frozen=True)
class Problem:
    """One prompt: the operands to add."""

    operands: tuple[int, ...]

    @property
    def answer(self) -> int:
        return sum(self.operands)

    def running_sums(self) -> list[int]:
        """The partial sums after the second, third, ... operand (the reasoning's content)."""
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


def sample_problems(count: int, generator: torch.Generator) -> list[Problem]:
    """``count`` problems with 2 or 3 operands in 0..9, drawn from ``generator`` (reproducible)."""
    n_operands = torch.randint(MIN_OPERANDS, MAX_OPERANDS + 1, (count,), generator=generator)
    digits = torch.randint(0, MAX_DIGIT + 1, (count, MAX_OPERANDS), generator=generator)
    return [Problem(tuple(int(d) for d in digits[i, : int(n_operands[i])])) for i in range(count)]


def completion_tokens(reasoning: Sequence[int], answer: int) -> list[str]:
    """The well-formed completion for the given reasoning numbers and answer."""
    return ["<r>", *(str(n) for n in reasoning), "</r>", "<a>", str(answer), "</a>", "<eos>"]


def max_number() -> int:
    """Largest number a completion may need a token for (the largest sum)."""
    return MAX_OPERANDS * MAX_DIGIT


@dataclass(frozen=True)
class Grade:
    """How one completion scored."""

    well_formed: bool
    correct: bool

    @property
    def reward(self) -> float:
        return 1.0 if self.correct else 0.0


def grade(tokens: Sequence[str], problem: Problem) -> Grade:
    """Parse ``<r> n+ </r> <a> n </a> <eos>`` exactly; correct means well-formed with the true sum."""
    well_formed = (
        len(tokens) >= 7
        and tokens[0] == "<r>"
        and list(tokens[-5:-3]) == ["</r>", "<a>"]
        and list(tokens[-2:]) == ["</a>", "<eos>"]
        and all(token.isdigit() for token in tokens[1:-5])
        and tokens[-3].isdigit()
    )
    return Grade(well_formed=well_formed, correct=well_formed and int(tokens[-3]) == problem.answer)


def noisy_demonstration(problem: Problem, generator: torch.Generator, noise: float) -> list[str]:
    """A warm-up target: the right format, each running sum off by 1 or 2 with probability ``noise``.

    The answer copies the last running sum, so the warm-up teaches the format and the copy rule
    firmly but the arithmetic only roughly; reinforcement learning has to sharpen it.
    """
    written = []
    for value in problem.running_sums():
        if float(torch.rand((), generator=generator)) < noise:
            offset = int(torch.randint(1, 3, (), generator=generator)) * (
                1 if float(torch.rand((), generator=generator)) < 0.5 else -1
            )
            value = min(max(value + offset, 0), max_number())
        written.append(value)
    return completion_tokens(written, written[-1])


def build_vocab() -> Vocab:
    """The task's vocabulary: specials, format tags, ``+``/``=`` and the numbers 0..27 as single tokens."""
    numbers = [str(n) for n in range(max_number() + 1)]
    return Vocab(["<pad>", "<bos>", "<eos>", "<r>", "</r>", "<a>", "</a>", "+", "=", *numbers])

