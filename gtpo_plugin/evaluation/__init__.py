"""Scoring generated samples as in the GTPO paper: accuracy, format consistency, pass@k and maj@k.

Imports neither verl nor math-verify: answer equivalence (:func:`answers_match`,
:func:`normalize_answer`) loads math-verify (the ``eval`` extra) on first use.
"""

from gtpo_plugin.evaluation.answers import answers_match, extract_answer, is_well_formatted, normalize_answer

__all__ = [
    "answers_match",
    "extract_answer",
    "is_well_formatted",
    "normalize_answer",
]
