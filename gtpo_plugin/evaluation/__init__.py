"""Scoring generated samples as in the GTPO paper: accuracy, format consistency, pass@k and maj@k.

Imports neither verl nor math-verify: answer equivalence (:func:`answers_match`,
:func:`normalize_answer`) loads math-verify (the ``eval`` extra) on first use.
"""

from gtpo_plugin.evaluation.answers import answers_match, extract_answer, is_well_formatted, normalize_answer
from gtpo_plugin.evaluation.metrics import maj_at_k, majority_vote, pass_at_k
from gtpo_plugin.evaluation.scoring import SampleRecord, read_samples, score_files, score_records

__all__ = [
    "SampleRecord",
    "answers_match",
    "extract_answer",
    "is_well_formatted",
    "maj_at_k",
    "majority_vote",
    "normalize_answer",
    "pass_at_k",
    "read_samples",
    "score_files",
    "score_records",
]
