"""The recipes' reward: 1 when the answer in the completion's ``<answer>`` tag equals the reference, else 0.

verl loads it as a custom reward function::

    reward.custom_reward_function.path=pkg://gtpo_plugin.reward
    reward.custom_reward_function.name=compute_score

and its default ``naive`` reward manager calls :func:`compute_score` once per completion (decoded
without special tokens) with keyword arguments, from a thread pool. Extraction, the format check and
answer equivalence are those of :mod:`gtpo_plugin.evaluation.answers`, so a training reward of 1 means
exactly what the evaluation counts as correct: the content of the **last** complete
``<answer>...</answer>`` block is mathematically equal to the reference (``1,000`` = ``1000``,
``\\frac{1}{2}`` = ``0.5``); no tag, an unclosed tag or a blank one scores 0, and a ``\\boxed{}``
outside the tag does not count. Needs math-verify (the ``eval`` extra).
"""

from __future__ import annotations

from typing import Any

from gtpo_plugin.evaluation.answers import answers_match, extract_answer, is_well_formatted, reference_text

__all__ = ["compute_score"]


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict[str, Any] | None = None,
    *,
    strict_format: bool = False,
) -> dict[str, float]:
    """Score one completion against its reference answer; verl's custom-reward signature.

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
    if not isinstance(solution_str, str):
        raise TypeError(f"solution_str must be the decoded completion (str), got {type(solution_str).__name__}")
    reference = reference_text(ground_truth, f"ground_truth (reward_model.ground_truth of a {data_source!r} row)")
    correct = answers_match(extract_answer(solution_str), reference)
    formatted = is_well_formatted(solution_str)
    score = correct and (formatted or not strict_format)
    return {"score": float(score), "acc": float(correct), "format": float(formatted)}
