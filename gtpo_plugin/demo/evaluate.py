"""Greedy evaluation on a fixed set of problems (the same for every seed and arm, no sampling noise)."""

from __future__ import annotations

import torch

from gtpo_plugin.demo.rollout import sample
from gtpo_plugin.demo.task import MAX_OPERANDS, MIN_OPERANDS, Problem, grade, sample_problems
from gtpo_plugin.demo.vocab import Vocab, pad_left

EVALUATION_SEED = 20_250_803  # fixed: the evaluation set never depends on the training seed


def evaluation_problems(count: int, min_operands: int = MIN_OPERANDS,
                        max_operands: int = MAX_OPERANDS) -> list[Problem]:
    """``count`` problems of the training distribution drawn from a fixed generator: the same list in every run."""
    return sample_problems(count, torch.Generator().manual_seed(EVALUATION_SEED), min_operands, max_operands)


@torch.no_grad()
def evaluate(model: torch.nn.Module, vocab: Vocab, problems: list[Problem], *, max_new_tokens: int) -> dict[str, float]:
    """Greedy accuracy, format accuracy (full format reward) and mean length over ``problems``."""
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
        "mean_length": sum(len(row) for row in rows) / len(rows),
        "problems": float(len(grades)),
    }
