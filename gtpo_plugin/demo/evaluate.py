"""Evaluation on a fixed set of problems, as the paper measures: greedy accuracy, pass@1 and pass@k.

The problems are the same for every seed and arm. Greedy decoding has no sampling noise. ``pass@1`` is the
mean accuracy of ``k`` samples per problem at the rollout temperature (what RL optimises), ``pass@k`` the
share of problems with at least one right sample among them; the samples are drawn from a generator seeded
with a fixed number, so two evaluations of the same weights give the same values and an evaluation before RL
and one after it use the same random stream.
"""

from __future__ import annotations

import torch

from gtpo_plugin.demo.rollout import sample
from gtpo_plugin.demo.task import MAX_OPERANDS, MIN_OPERANDS, Problem, grade, sample_problems
from gtpo_plugin.demo.vocab import Vocab, pad_left

EVALUATION_SEED = 20_250_803  # fixed: the evaluation set never depends on the training seed
PASS_AT_K = 8  # samples per problem for pass@1 and pass@8, as in the issue that asked for them


def evaluation_problems(count: int, min_operands: int = MIN_OPERANDS,
                        max_operands: int = MAX_OPERANDS) -> list[Problem]:
    """``count`` problems of the training distribution drawn from a fixed generator: the same list in every run."""
    return sample_problems(count, torch.Generator().manual_seed(EVALUATION_SEED), min_operands, max_operands)


@torch.no_grad()
def _generate(model: torch.nn.Module, vocab: Vocab, problems: list[Problem], *, max_new_tokens: int,
              generator: torch.Generator | None, temperature: float = 1.0) -> list[list[int]]:
    device = next(model.parameters()).device
    prompts, mask = pad_left([vocab.encode(p.prompt_tokens()) for p in problems], vocab.pad_id)
    was_training = model.training
    model.eval()
    rows = sample(model, prompts.to(device), mask.to(device), eos_id=vocab.eos_id, pad_id=vocab.pad_id,
                  max_new_tokens=max_new_tokens, generator=generator, temperature=temperature)
    model.train(was_training)
    return rows


def evaluate(model: torch.nn.Module, vocab: Vocab, problems: list[Problem], *, max_new_tokens: int) -> dict[str, float]:
    """Greedy accuracy, format accuracy (full format reward) and mean length over ``problems``."""
    rows = _generate(model, vocab, problems, max_new_tokens=max_new_tokens, generator=None)
    grades = [grade(vocab.decode(row), problem) for row, problem in zip(rows, problems, strict=True)]
    return {
        "accuracy": sum(g.correct for g in grades) / len(grades),
        "format_accuracy": sum(g.well_formed for g in grades) / len(grades),
        "mean_length": sum(len(row) for row in rows) / len(rows),
        "problems": float(len(grades)),
    }


def pass_at_k(model: torch.nn.Module, vocab: Vocab, problems: list[Problem], *, max_new_tokens: int,
              temperature: float, k: int = PASS_AT_K) -> dict[str, float]:
    """``pass@1`` (mean accuracy of ``k`` samples per problem at ``temperature``) and ``pass@k``.

    With exactly ``k`` samples per problem the unbiased pass@k estimator is the share of problems with at
    least one right sample. Cost: one batched generation of ``len(problems) * k`` rows.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    repeated = [problem for problem in problems for _ in range(k)]
    rows = _generate(model, vocab, repeated, max_new_tokens=max_new_tokens,
                     generator=torch.Generator().manual_seed(EVALUATION_SEED), temperature=temperature)
    grades = [grade(vocab.decode(row), problem).correct for row, problem in zip(rows, repeated, strict=True)]
    correct = torch.tensor(grades, dtype=torch.float64).view(len(problems), k)
    return {"pass@1": float(correct.mean()), f"pass@{k}": float(correct.max(dim=1).values.mean())}


def evaluate_all(model: torch.nn.Module, vocab: Vocab, problems: list[Problem], *, max_new_tokens: int,
                 temperature: float) -> dict[str, float]:
    """:func:`evaluate` (greedy) and :func:`pass_at_k` in one dict: what every run records before and after RL."""
    return {**evaluate(model, vocab, problems, max_new_tokens=max_new_tokens),
            **pass_at_k(model, vocab, problems, max_new_tokens=max_new_tokens, temperature=temperature)}
