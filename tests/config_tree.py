"""Resolved configs as flat ``{"a.b.c": value}`` maps, and the keys where two of them differ."""

from __future__ import annotations

from typing import Any


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys; an empty dict stays a value."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differing_keys(a: dict[str, Any], b: dict[str, Any], masks: tuple[str, str] = ("", "")) -> set[str]:
    """Keys whose values differ (a key one side lacks counts), once ``masks[0]`` in ``a``'s values and
    ``masks[1]`` in ``b``'s (a run's own name, or the paths made from it) are replaced by one placeholder."""
    flat_a, flat_b = flatten(a), flatten(b)

    def shown(value: Any, mask: str) -> str:
        return str(value).replace(mask, "<>") if mask else str(value)

    return {key for key in flat_a.keys() | flat_b.keys()
            if shown(flat_a.get(key, "<absent>"), masks[0]) != shown(flat_b.get(key, "<absent>"), masks[1])}
