"""Capability probes on verl's internals, and whether GTPO can be served in this process.

The adapter never asks which verl version is installed to decide what to do: before it hooks a verl
module it probes what it relies on there (names present, parameters as expected, source markers for
layouts it repeats), so a verl that changed underneath it is noticed at import, not at the first
rollout. A failed probe never raises into verl's import. It logs one error naming the verl attribute
and verl's version, and marks a *component* unavailable with that reason; the start-up hooks then
refuse a run selecting ``gtpo`` (estimator or loss) on a trainer that needs the component, and every
other run goes on untouched. This module imports nothing of verl but its version.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import verl

logger = logging.getLogger(__name__)

#: The verl versions CI runs the whole suite on; others get GTPO when the probes pass, with a warning.
TESTED_VERL_VERSIONS = ("0.9.0", "0.9.1")

#: What every trainer needs: the registries (``core_algos``) and the advantage stage (``ray_trainer``).
CORE = ("registries", "compute_advantage")

#: Every component: GTPO's core, verl's v1 trainer, the legacy trainer and the experimental trainers.
ALL = (*CORE, "v1", "legacy", "separation", "one_step_off", "fully_async")

_UNAVAILABLE: dict[str, str] = {}  # component -> why GTPO cannot use it
_DECLARED_BATCH_FIELDS: list[bool] = [False]  # whether verl passes estimators the batch fields they declare


def estimators_declare_batch_fields(core_algos: Any = None) -> bool:
    """Whether verl lets a registered estimator declare batch fields (upstream/estimator-batch-fields.patch).

    With ``core_algos`` (just imported), probe it and remember the answer; without, return what was found.
    """
    if core_algos is not None:
        register = getattr(core_algos, "register_adv_est", None)
        _DECLARED_BATCH_FIELDS[0] = (hasattr(core_algos, "get_adv_estimator_batch_fields") and register is not None
                                     and "batch_fields" in inspect.signature(register).parameters)
    return _DECLARED_BATCH_FIELDS[0]


class ProbeError(Exception):
    """A verl internal the adapter relies on is missing or not what it expects."""

    def __init__(self, attribute: str, problem: str):
        super().__init__(f"{attribute} {problem}")
        self.attribute = attribute
        self.problem = problem


def verl_version() -> str:
    return str(getattr(verl, "__version__", "unknown"))


def warn_if_untested(version: str) -> bool:
    """Log one warning when ``version`` is not one CI tests; returns whether it warned."""
    if version in TESTED_VERL_VERSIONS:
        return False
    logger.warning("GTPO plugin: verl %s is not a version CI tests (%s); its probes passed, so GTPO is registered. "
                   "Please report problems with this verl version.", version, ", ".join(TESTED_VERL_VERSIONS))
    return True


def mark_unavailable(component: str, attribute: str, problem: str) -> None:
    """Record (and log once, as an error) that ``component`` cannot serve GTPO, naming the verl attribute."""
    if component in _UNAVAILABLE:
        return
    reason = f"verl {verl_version()}: {attribute} {problem}"
    _UNAVAILABLE[component] = reason
    logger.error("GTPO plugin: %s; runs selecting adv_estimator or loss_mode 'gtpo' on a trainer that needs it are "
                 "refused at start-up (runs with other estimators and losses are untouched)", reason)


def reasons(components: Iterable[str]) -> list[str]:
    """Why each unavailable one of ``components`` is so (empty: all available)."""
    return [_UNAVAILABLE[component] for component in dict.fromkeys(components) if component in _UNAVAILABLE]


def refuse_if_unavailable(components: Iterable[str], trainer: str) -> None:
    """Raise ``RuntimeError`` naming every reason when one of ``components`` is unavailable."""
    found = reasons(components)
    if found:
        raise RuntimeError(f"adv_estimator/loss_mode 'gtpo' cannot run on {trainer} with this verl: "
                           + "; ".join(found) + ". The GTPO plugin would have to change verl code it no longer "
                           "recognises; use a verl version CI tests (" + ", ".join(TESTED_VERL_VERSIONS) + ") or "
                           "another estimator")


def attribute(owner: Any, name: str, qualname: str, *, own: bool = False) -> Any:
    """``owner.name``; with ``own``, defined on ``owner`` itself rather than inherited."""
    if own and name not in vars(owner):
        raise ProbeError(qualname, "is not defined there any more")
    if not hasattr(owner, name):
        raise ProbeError(qualname, "is missing")
    return getattr(owner, name)


def parameters(function: Any, qualname: str, leading: Sequence[str] = (), named: Sequence[str] = ()) -> None:
    """Check that ``function`` takes ``leading`` as its first parameters, in order, and accepts ``named``."""
    try:
        found = inspect.signature(function).parameters
    except (TypeError, ValueError) as error:
        raise ProbeError(qualname, f"has no inspectable signature ({error})") from error
    names = list(found)
    if names[:len(leading)] != list(leading) or not set(named) <= set(found):
        raise ProbeError(qualname, f"has parameters ({', '.join(names)}); the GTPO plugin expects "
                                   f"({', '.join([*leading, *named])}) among them, the first ones in that order")


def source_mentions(function: Any, qualname: str, markers: Sequence[str]) -> None:
    """Check that the source of ``function`` still holds ``markers`` (a layout the adapter repeats)."""
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError) as error:
        raise ProbeError(qualname, f"has no readable source ({error})") from error
    missing = [marker for marker in markers if marker not in source]
    if missing:
        raise ProbeError(qualname, f"no longer contains {missing}, which the GTPO plugin relies on")
