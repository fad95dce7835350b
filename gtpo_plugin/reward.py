"""The recipes' rewards, one per preset, as verl custom reward functions.

verl loads the preset's function (``recipes/config/preset/*.yaml``) as::

    reward.custom_reward_function.path=pkg://gtpo_plugin.reward
    reward.custom_reward_function.name=compute_paper_score   # preset paper (default)
    reward.custom_reward_function.name=compute_score         # preset verl

and its ``naive`` reward manager calls the function once per completion (decoded without special
tokens) with keyword arguments, from a thread pool. Both return verl's reward dict: ``score`` is the
reward; ``acc`` and ``format`` mean the same under both presets, so validation curves
(``val-core/<source>/acc/mean@n``) compare across presets and with ``gtpo-eval``.

- :func:`compute_score` (preset ``verl``): 1 when the content of the **last** complete
  ``<answer>...</answer>`` block is mathematically equal to the reference (``1,000`` = ``1000``,
  ``\\frac{1}{2}`` = ``0.5``), else 0; no tag, an unclosed tag or a blank one scores 0, and a
  ``\\boxed{}`` outside the tag does not count.
- :func:`compute_paper_score` (preset ``paper``): the GTPO authors' reward,
  :func:`gtpo_plugin.paper_reward.paper_reward`: up to 10 for the format plus 10 for a right answer
  (their numeric/containment match, counted only with the full format), so a score in {0, 1, 1.5, 10, 20}.

``acc`` and ``format`` are those of :mod:`gtpo_plugin.evaluation.answers` (math-verify on the last
answer block; exactly one ``<reasoning>`` block then one ``<answer>`` block), so an ``acc`` of 1 means
exactly what the evaluation counts as correct. Needs math-verify (the ``eval`` extra).
"""

from __future__ import annotations

from typing import Any

from gtpo_plugin.evaluation.answers import answers_match, extract_answer, is_well_formatted, reference_text
from gtpo_plugin.paper_reward import paper_reward

__all__ = ["compute_paper_score", "compute_score"]


def _checked_inputs(data_source: str, solution_str: object, ground_truth: Any) -> tuple[str, str]:
    """The completion and the reference as text, or an error naming verl's field."""
    if not isinstance(solution_str, str):
        raise TypeError(f"solution_str must be the decoded completion (str), got {type(solution_str).__name__}")
    reference = reference_text(ground_truth, f"ground_truth (reward_model.ground_truth of a {data_source!r} row)")
    return solution_str, reference


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict[str, Any] | None = None,
    *,
    strict_format: bool = False,
) -> dict[str, float]:
    """Score one completion 1 or 0 against its reference answer; verl's custom-reward signature.

    Args:
        data_source: the row's ``data_source`` (``gsm8k``, ``math``, ``aime2024``, ...); every math
            dataset is scored the same way.
        solution_str: the decoded completion.
        ground_truth: ``reward_model.ground_truth`` of the row: a string, or a finite number
            (``27.0`` reads as ``27``).
        extra_info: the row's ``extra_info``; unused.
        strict_format: set through ``reward.custom_reward_function.reward_kwargs.strict_format=true``:
            a right answer scores only when the completion is exactly one ``<reasoning>`` block followed
            by one ``<answer>`` block.

    Returns:
        ``{"score": s, "acc": a, "format": f}`` in {0.0, 1.0}: ``score`` is the reward, ``acc`` whether
        the answer is right whatever the format, ``format`` whether the completion is well formed.
        verl logs ``acc`` and ``format`` per data source in validation (``val-core/<source>/acc/...``).
    """
    completion, reference = _checked_inputs(data_source, solution_str, ground_truth)
    correct = answers_match(extract_answer(completion), reference)
    formatted = is_well_formatted(completion)
    score = correct and (formatted or not strict_format)
    return {"score": float(score), "acc": float(correct), "format": float(formatted)}


def compute_paper_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Score one completion with the GTPO authors' reward (format up to 10 + correctness 10); verl's signature.

    Args are those of :func:`compute_score` (without ``strict_format``: this reward pays a right
    answer only with the full format anyway).

    Returns:
        ``{"score", "acc", "format", "format_reward", "correctness_reward"}``: ``score`` is the
        authors' total (0, 1, 1.5, 10 or 20), ``format_reward`` and ``correctness_reward`` its two parts;
        ``acc`` and ``format`` are 0/1 as in :func:`compute_score`, for validation curves that mean the
        same under both presets. Costs one extra math-verify comparison per completion for ``acc``.
    """
    completion, reference = _checked_inputs(data_source, solution_str, ground_truth)
    reward = paper_reward(completion, reference)
    return {
        "score": reward.total,
        "acc": float(answers_match(extract_answer(completion), reference)),
        "format": float(is_well_formatted(completion)),
        "format_reward": reward.format,
        "correctness_reward": reward.correctness,
    }
