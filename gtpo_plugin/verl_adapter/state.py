"""⟨H⟩_ini, GTPO's only state: measured once, kept in the ``algorithm`` config, saved with checkpoints.

The spec fixes ⟨H⟩_ini as the mean of ⟨H⟩_i over the completions of the first training batch and
keeps it for the whole run, resume included. Its one home is ``algorithm.gtpo.initial_entropy`` of
the config object the advantage stage receives: null means "not measured yet", a number is used as
is (set by the user, measured, or read back from a checkpoint). A checkpoint folder
``global_step_<N>/`` holds it in ``gtpo_state.json``; on resume a value the user set explicitly wins
over the saved one (with a warning when they differ).
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import torch
from omegaconf import DictConfig, open_dict

from gtpo_plugin.config import check_initial_entropy
from gtpo_plugin.entropy import mean_completion_entropy
from gtpo_plugin.verl_adapter.settings import GTPO, gtpo_config

logger = logging.getLogger(__name__)

STATE_FILE = "gtpo_state.json"


def _set_initial_entropy(algorithm: Any, value: float) -> None:
    if isinstance(algorithm, DictConfig):
        with open_dict(algorithm):
            if algorithm.get(GTPO) is None:
                algorithm[GTPO] = {}
            algorithm[GTPO]["initial_entropy"] = value
    else:
        algorithm.setdefault(GTPO, {})["initial_entropy"] = value


def initial_entropy(algorithm: Any, entropy: torch.Tensor, response_mask: torch.Tensor) -> float:
    """⟨H⟩_ini for this batch: the configured value, or, when null, measured on this batch and stored.

    ``entropy`` and ``response_mask`` are ``[B, L]``; completions without a valid token do not count.
    """
    value = gtpo_config(algorithm).initial_entropy
    if value is not None:
        return float(value)
    measured = mean_completion_entropy(entropy, response_mask)
    _set_initial_entropy(algorithm, measured)
    logger.info("GTPO: measured the initial entropy <H>_ini = %.6f nats on the first training batch; it is fixed "
                   "from now on (entropy filter %s)", measured,
                   "off: <H>_ini > threshold" if measured > gtpo_config(algorithm).entropy_threshold else "on")
    return measured


def save_state(algorithm: Any, folder: str) -> str | None:
    """Write ⟨H⟩_ini into ``folder/gtpo_state.json``; returns the path, or None before it is known."""
    value = gtpo_config(algorithm).initial_entropy
    if value is None:
        return None
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, STATE_FILE)
    temporary = path + ".tmp"
    with open(temporary, "w") as file:
        json.dump({"initial_entropy": float(value)}, file)
    os.replace(temporary, path)  # atomic: a crash never leaves a half-written state file
    return path


def load_state(algorithm: Any, folder: str) -> float | None:
    """Restore ⟨H⟩_ini from ``folder/gtpo_state.json`` into ``algorithm``; returns the value in use after it.

    A missing file (a checkpoint written before GTPO ran, or by another estimator) leaves the config
    as it is, with a warning: ⟨H⟩_ini is then measured on the first batch after resume.
    """
    configured = gtpo_config(algorithm).initial_entropy
    path = os.path.join(folder, STATE_FILE)
    if not os.path.exists(path):
        if configured is None:
            logger.warning("GTPO: no %s in %s; <H>_ini will be measured on the first batch after resume",
                           STATE_FILE, folder)
        return configured
    with open(path) as file:
        saved = json.load(file).get("initial_entropy")
    if saved is None:
        raise ValueError(f"{path} holds no 'initial_entropy'; delete the file to measure <H>_ini again")
    check_initial_entropy(saved)
    if configured is not None:
        if not math.isclose(configured, saved, rel_tol=1e-9, abs_tol=0.0):
            logger.warning("GTPO: algorithm.gtpo.initial_entropy=%s is set explicitly and differs from the %s saved "
                           "in %s; keeping the configured value", configured, saved, path)
        return configured
    _set_initial_entropy(algorithm, float(saved))
    logger.info("GTPO: restored <H>_ini = %s nats from %s", saved, path)
    return float(saved)
