"""GTPOConfig validation and the core's independence from verl."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from gtpo_plugin import GTPOConfig


def test_defaults_follow_the_paper():
    config = GTPOConfig()
    assert (config.amplification, config.entropy_coef, config.conflict_mode) == (2.0, 0.1, "prefix_suffix")
    assert config.entropy_threshold == pytest.approx(math.log(2))
    assert config.initial_entropy is None


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"amplification": 0.9}, "amplification must be a finite number >= 1"),
        ({"entropy_coef": -1.0}, "entropy_coef must be >= 0"),
        ({"entropy_coef": float("nan")}, "entropy_coef must be a finite number"),
        ({"entropy_threshold": 0.0}, "entropy_threshold must be > 0"),
        ({"conflict_mode": "suffix"}, "conflict_mode must be one of"),
        ({"initial_entropy": -0.1}, "initial_entropy must be a number >= 0"),
        ({"amplfication": 2.0}, r"unknown key\(s\) under algorithm.gtpo: \['amplfication'\]"),
    ],
)
def test_bad_values_are_named(values, words):
    with pytest.raises(ValueError, match=words):
        GTPOConfig.from_mapping(values)


def test_from_mapping_accepts_partial_settings():
    config = GTPOConfig.from_mapping({"conflict_mode": "any", "initial_entropy": math.inf})
    assert config.conflict_mode == "any" and config.to_dict()["amplification"] == 2.0


def test_core_imports_neither_verl_nor_ray_nor_omegaconf():
    code = ("import sys, gtpo_plugin; bad = [m for m in ('verl', 'ray', 'omegaconf') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "VERL_USE_EXTERNAL_PLUGINS": "none"})
