"""Answer extraction, format checking and math-answer equivalence for GTPO's output format.

The training prompt asks for the reasoning between ``<reasoning>`` and ``</reasoning>`` and the final
answer between ``<answer>`` and ``</answer>``. :func:`extract_answer` and :func:`is_well_formatted`
are plain regular expressions. :func:`answers_match` and :func:`normalize_answer` parse answers
with `math-verify <https://github.com/huggingface/Math-Verify>`_ (the ``eval`` extra); it is imported
on first use so that this module imports without it.

math-verify bounds each parse and comparison with ``signal.alarm``, which only works on the main
thread. Off the main thread (a thread pool in a reward loop) the alarm is switched off and the
length cap :data:`MAX_ANSWER_CHARS` bounds the work instead: answers longer than that are compared
as normalised strings only, never handed to sympy.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import re
import threading
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_ANSWER_CHARS",
    "answers_match",
    "extract_answer",
    "is_well_formatted",
    "normalize_answer",
]

#: Answers longer than this are never parsed by sympy (bounds the cost where no alarm can fire).
MAX_ANSWER_CHARS = 256
#: Seconds math-verify may spend on one parse or one comparison (main thread only).
TIMEOUT_SECONDS = 5

_TAG = re.compile(r"</?(?:reasoning|answer)>")
# Content of an answer block that holds no other answer opening tag, so "<answer> <answer>5</answer>"
# yields "5" and not " <answer>5".
_ANSWER_BLOCK = re.compile(r"<answer>((?:(?!<answer>).)*?)</answer>", re.DOTALL)
_WELL_FORMED = re.compile(
    r"\s*<reasoning>(?P<reasoning>.*?)</reasoning>\s*<answer>(?P<answer>.*?)</answer>\s*", re.DOTALL
)
_LATEX_DELIMITED = re.compile(r"(?<!\\)\$|\\\(|\\\[|\\boxed")  # an escaped \$ is a dollar sign
_LATEX_MARKUP = re.compile(r"[\\^{}_]")
_WORD = re.compile(r"[A-Za-z]{2,}")
_DIGIT_GROUP_SPACE = re.compile(r"(?<=\d) (?=\d{3}(?:\D|$))")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?:\D|$))")
_INSTALL_HINT = "pip install 'gtpo-plugin[eval]'"


def extract_answer(completion: str) -> str | None:
    """The stripped content of the **last** complete ``<answer>...</answer>`` block of ``completion``.

    The last block counts because a model that restates or corrects itself ends with its final
    answer. Returns ``None`` when there is no complete block or the last one is blank; an
    unclosed ``<answer>`` never counts. A ``\\boxed{}`` outside the tags is not an answer here:
    the paper's format puts the answer in the tag.
    """
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}")
    blocks = _ANSWER_BLOCK.findall(completion)
    if not blocks:
        return None
    answer = blocks[-1].strip()
    return answer or None


def is_well_formatted(completion: str) -> bool:
    """True when ``completion`` is one reasoning block followed by one answer block, nothing else.

    Well formed means: apart from surrounding whitespace the text is ``<reasoning>R</reasoning>``
    then ``<answer>A</answer>``; R and A are not blank and contain none of the four tags. This is
    the paper's "formatting consistency" (decode completions with ``skip_special_tokens`` so an
    end-of-sequence token does not count as trailing text).
    """
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}")
    match = _WELL_FORMED.fullmatch(completion)
    if match is None:
        return False
    reasoning, answer = match.group("reasoning"), match.group("answer")
    return all(part.strip() and not _TAG.search(part) for part in (reasoning, answer))


def answers_match(predicted: str | None, reference: str) -> bool:
    """True when ``predicted`` is mathematically equal to ``reference`` (math-verify, then strings).

    ``predicted`` is usually :func:`extract_answer`'s result; ``None`` (no answer) never matches.
    Both sides are parsed as numbers or LaTeX, so ``"1,000"`` equals ``"1000"``, ``"\\frac{1}{2}"``
    equals ``"0.5"`` and ``"\\boxed{7}"`` equals ``"7"``. When either side cannot be parsed the
    normalised strings are compared. Needs math-verify (the ``eval`` extra).
    """
    if not isinstance(reference, str):
        raise TypeError(f"reference must be a str, got {type(reference).__name__}")
    if predicted is None:
        return False
    if not isinstance(predicted, str):
        raise TypeError(f"predicted must be a str or None, got {type(predicted).__name__}")
    math_verify = _math_verify()
    gold, target = _parse(_clean(reference)), _parse(_clean(predicted))
    if gold and target:
        # verify() is not symmetric: the reference goes first (equations are unwrapped on that side).
        return bool(math_verify.verify(list(gold), list(target), timeout_seconds=_timeout()))
    return _string_key(predicted) == _string_key(reference) != ""


def normalize_answer(answer: str) -> str:
    """A canonical string for ``answer``, the vote key of maj@k: equal keys mean the same answer.

    Numbers become exact integers or reduced fractions (``"1,000"`` and ``"1000.0"`` give
    ``"1000"``; ``"\\frac{2}{4}"`` and ``"0.5"`` give ``"1/2"``); other parsable LaTeX becomes
    sympy's printed form; the rest is a normalised string (no spaces, ``$``, ``\\boxed``,
    ``\\text``, thousands separators, lower case). Needs math-verify (the ``eval`` extra).
    """
    if not isinstance(answer, str):
        raise TypeError(f"answer must be a str, got {type(answer).__name__}")
    _math_verify()
    parsed = _parse(_clean(answer))
    expr = next((item for item in parsed if not isinstance(item, str)), None)
    if expr is None:
        return _string_key(answer)
    return _expr_key(expr)


def _math_verify() -> Any:
    """Import math-verify on first use, with the command that installs it in the error."""
    try:
        import math_verify
    except ImportError as error:
        raise ImportError(
            f"math-answer equivalence needs the math-verify package; install it with {_INSTALL_HINT}"
        ) from error
    return math_verify


def _timeout() -> int | None:
    """math-verify's alarm seconds: only the main thread can take a SIGALRM, elsewhere none."""
    return TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None


def _clean(text: str) -> str:
    """Unicode minus to ASCII, "1 000" to "1000", surrounding whitespace and a final full stop removed."""
    text = _DIGIT_GROUP_SPACE.sub("", text.replace("\u2212", "-").strip())
    return text[:-1].rstrip() if text.endswith(".") else text


@functools.lru_cache(maxsize=65536)
def _parse_cached(text: str, timeout: int | None) -> tuple[Any, ...]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    latex_first = [LatexExtractionConfig(), ExprExtractionConfig()]
    expr_first = [ExprExtractionConfig(), LatexExtractionConfig()]
    if _LATEX_DELIMITED.search(text):
        attempts = [(text, latex_first)]
    elif _WORD.search(text) and not _LATEX_MARKUP.search(text):
        # Prose such as "18 dollars" or "blue": only numbers are read from it; as LaTeX its words
        # would become products of symbols (b*l*u*e).
        attempts = [(text, expr_first)]
    else:
        # Bare LaTeX or numbers such as "\frac{1}{2}", "2^{1/2}", "(1, 2)": math-verify only reads
        # LaTeX between delimiters.
        attempts = [(f"${text}$", latex_first), (text, expr_first)]
    for candidate, config in attempts:
        parsed = parse(candidate, extraction_config=config, parsing_timeout=timeout)  # type: ignore[arg-type]
        if parsed:
            return tuple(parsed)
    return ()


def _parse(text: str) -> tuple[Any, ...]:
    """math-verify's parse of an answer (sympy objects, then the matched string); () if none."""
    if not text or len(text) > MAX_ANSWER_CHARS:
        return ()
    return _parse_cached(text, _timeout())


def _expr_key(expr: Any) -> str:
    """Printed form of a parsed answer, numbers made exact so that 0.5 and 1/2 print alike."""
    import sympy

    try:
        value = expr.doit() if isinstance(expr, sympy.Basic) else expr
        if isinstance(value, sympy.Eq) and value.lhs.is_Symbol:
            value = value.rhs  # "x = 5" votes with "5"
        if isinstance(value, sympy.Float):
            value = sympy.Rational(str(value))
        if isinstance(value, sympy.Rational):
            return str(value)
        return str(value).replace(" ", "")
    except Exception:  # sympy can raise almost anything on exotic input; the vote key must not
        logger.debug("could not print parsed answer", exc_info=True)
        return str(expr).replace(" ", "")


def _string_key(text: str) -> str:
    """String normalisation for answers nothing could parse."""
    key = _clean(text)
    key = re.sub(r"\\boxed\{(.*)\}", r"\1", key)
    key = re.sub(r"\\text\{(.*?)\}", r"\1", key)
    key = _THOUSANDS.sub("", key)
    key = re.sub(r"\\[,!;: ]|\\left|\\right|\$|\s", "", key)
    return key.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").lower()


def reference_text(reference: Any, location: str) -> str:
    """A reference answer as a string; integral numbers (AMC answers stored as 27.0) print without '.0'.

    Accepts strings and finite numbers, numpy's included; ``location`` starts the error message
    (a file and line, or the field of a reward call).
    """
    if isinstance(reference, bool) or reference is None:
        raise ValueError(f"{location}: missing 'reference' (the ground-truth answer, a string or number)")
    if isinstance(reference, numbers.Integral):
        return str(int(reference))
    if isinstance(reference, numbers.Real):
        value = float(reference)
        if not math.isfinite(value):
            raise ValueError(f"{location}: 'reference' must be finite, got {reference}")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(reference, str) and reference.strip():
        return reference
    raise ValueError(f"{location}: 'reference' must be a non-empty string or a number, got {reference!r}")
