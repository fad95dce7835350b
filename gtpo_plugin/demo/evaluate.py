"""Greedy evaluation on every problem of the task (the same set for both algorithms, no sampling noise)."""

from __future__ import annotations

import itertools

import torch

from gtpo_plugin.demo.rollout import sample
from gtpo_plugin.demo.task import MAX_DIGIT, MAX_OPERANDS, MIN_OPERANDS, Problem, grade
from gtpo_plugin.demo.vocab import Vocab, pad_left


def all_problems() -> list[Problem]:
    """Every prompt of the task: 100 with two operands, 1,000 with three."""
    digits = range(MAX_DIGIT + 1)
    return [Problem(operands) for count in range(MIN_OPERANDS, MAX_OPERANDS + 1)
            for operands in itertools.product(digits, repeat=count)]


@torch.no_grad()
def evaluate(model: torch.nn.Module, vocab: Vocab, problems: list[Problem], *, max_new_tokens: int) -> dict[str, float]:
    """Greedy accuracy and format accuracy over ``problems``."""
    device = next(model.parameters()).device
    prompts, mask = pad_left([vocab.encode(p.prompt_tokens()) for p in problems], vocab.pad_id)
    was_training = model.training
    model.eval()
    rows = sample(model, prompts.to(device), mask.to(device), eos_id=vocab.eos_id, pad_id=vocab.pad_id,
                  max_new_tokens=max_new_tokens, generator=None)
    model.train(was_training)
    grades = [grade(vocab.decode(row), problem) for row, problem in zip(rows, problems, strict=True)]
    return {
        "accuracy": sum(g.correct for g in grades) / len(grades),
        "format_accuracy": sum(g.well_formed for g in grades) / len(grades),
        "problems": float(len(grades)),
    }
