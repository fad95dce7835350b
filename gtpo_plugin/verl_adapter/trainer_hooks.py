"""The one place where the GTPO plugin changes verl's code paths (verl 0.9.1), installed at plugin load.

Each hook wraps a verl function, calls the original, and acts only when the run selects
``algorithm.adv_estimator=gtpo``; for every other run they pass straight through.

- ``verl.trainer.ppo.ray_trainer.compute_advantage``: when the ``DataProto`` holds ``responses``
  and ``entropy``, makes them visible to the ``gtpo`` estimator and puts the batch's GTPO metrics
  in ``data.meta_info["gtpo_metrics"]`` (``verl.trainer.ppo.v1.utils``, which imported the function
  by name, is pointed at the wrapper too).
- v1 trainer ``PPOTrainer`` (``trainer.use_v1=true``; the ``sync``, ``colocate_async`` and
  ``separate_async`` trainers inherit these methods unchanged):

  - ``__init__``: start-up checks of the settings (:func:`.settings.check_trainer_config`);
  - ``_compute_advantage``: verl fetches a fixed list of fields from TransferQueue that has neither
    ``responses`` nor ``entropy`` (which ``_compute_old_log_prob`` stores: verl asks the engine for
    it with ``calculate_entropy=True`` whatever ``actor.entropy_coeff`` is). The hook fetches the
    two for the same keys, hands them to the estimator, and adds the GTPO metrics to the step's
    metrics, which verl logs once per step. Agent loops with several outputs per session are
    refused (verl's GRPO special-cases them; GTPO does not define that case);
  - ``_save_checkpoint`` / ``_load_checkpoint``: ⟨H⟩_ini to and from ``global_step_<N>/gtpo_state.json``.
- legacy trainer ``RayPPOTrainer`` (``trainer.use_v1=false``, deprecated; the experimental
  separation, one-step-off-policy and fully-async trainers derive from it): it discards the
  old-log-prob entropy, so with ``adv_estimator=gtpo`` its ``__init__`` stops with an error
  saying to use the v1 trainer.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
import transfer_queue as tq
from verl.trainer.ppo import ray_trainer
from verl.trainer.ppo.v1 import utils as v1_utils
from verl.trainer.ppo.v1.trainer_base import PPOTrainer

from gtpo_plugin.verl_adapter.estimator import gtpo_batch
from gtpo_plugin.verl_adapter.settings import GTPO, check_trainer_config, norm_adv_by_std, uses_gtpo_estimator
from gtpo_plugin.verl_adapter.state import load_state, save_state

_MARK = "__gtpo_hook__"


def _wrap(owner: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Replace ``owner.name`` with ``make(original)``, once (installing twice is a no-op)."""
    original = getattr(owner, name)
    if getattr(original, _MARK, False):
        return
    wrapper = functools.wraps(original)(make(original))
    setattr(wrapper, _MARK, True)
    setattr(owner, name, wrapper)


def install() -> None:
    """Install every hook listed in the module docstring."""
    _wrap(ray_trainer, "compute_advantage", _hook_compute_advantage)
    # v1/utils.py bound verl's function by name when it was imported (above, before the wrap): rebind it.
    v1_utils.compute_advantage = ray_trainer.compute_advantage
    _wrap(PPOTrainer, "__init__", _hook_v1_init)
    _wrap(PPOTrainer, "_compute_advantage", _hook_v1_compute_advantage)
    _wrap(PPOTrainer, "_save_checkpoint", _hook_v1_save_checkpoint)
    _wrap(PPOTrainer, "_load_checkpoint", _hook_v1_load_checkpoint)
    _wrap(ray_trainer.RayPPOTrainer, "__init__", _hook_legacy_init)


def _hook_compute_advantage(original: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(original)

    def compute_advantage(*args: Any, **kwargs: Any) -> Any:
        call = signature.bind(*args, **kwargs).arguments  # the arguments given, without defaults
        data, estimator = call["data"], call["adv_estimator"]
        fields = set(data.batch.keys()) if data.batch is not None else set()
        if str(getattr(estimator, "value", estimator)) != GTPO or not {"responses", "entropy"} <= fields:
            return original(*args, **kwargs)
        config, norm = call.get("config"), call.get("norm_adv_by_std_in_grpo")
        if config is not None and norm is not None and norm != norm_adv_by_std(config):
            raise ValueError(
                f"norm_adv_by_std_in_grpo={norm} disagrees with the config's "
                f"algorithm.norm_adv_by_std_in_grpo={norm_adv_by_std(config)}; the 'gtpo' estimator reads the config "
                "(as verl's registered estimators do): set it there"
            )
        with gtpo_batch(data.batch["responses"], data.batch["entropy"]) as inputs:
            data = original(*args, **kwargs)
        data.meta_info["gtpo_metrics"] = inputs.metrics
        return data

    return compute_advantage


def _hook_v1_init(original: Callable[..., Any]) -> Callable[..., Any]:
    def __init__(self: PPOTrainer, config: Any, *args: Any, **kwargs: Any) -> None:
        check_trainer_config(config)
        original(self, config, *args, **kwargs)

    return __init__


def _check_one_output_per_session(keys: Sequence[str]) -> None:
    """Refuse agent loops that return several outputs per session (TransferQueue keys ``{uid}_{session}_{i}``).

    verl 0.9.1 (``v1.utils.compute_advantage_for_multi_trajectories``) computes GRPO on each
    session's last output only and copies that one number per session to its other outputs; any
    other estimator gets every output as a separate row of the ``uid`` group. GTPO's advantage is per
    token, set by positions within one completion, so a copied number has no GTPO counterpart, and
    separate rows would count one session several times in its group. Masks with holes inside one
    output (multi-turn tool use) are supported.
    """
    sessions = Counter(key.rsplit("_", 1)[0] for key in keys if key.count("_") >= 2)
    repeated = [session for session, count in sessions.items() if count > 1]
    if repeated:
        raise NotImplementedError(
            f"adv_estimator 'gtpo' supports one output per agent-loop session; sessions {repeated[:3]} have several. "
            "Use an agent loop that returns a single output per trajectory."
        )


def _fetch_responses_and_entropy(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``responses`` and ``entropy`` of ``batch`` from TransferQueue, right-padded with 0 to ``[B, L]``."""
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["responses", "entropy"])
    if data.get("entropy", None) is None:
        raise RuntimeError(
            "adv_estimator 'gtpo' found no 'entropy' in TransferQueue for this batch: verl's old-log-prob pass did not "
            "run (algorithm.rollout_correction.bypass_mode=true skips it); GTPO needs it"
        )
    padded = data.to_padded_tensor()
    return padded["responses"], padded["entropy"]


def _hook_v1_compute_advantage(original: Callable[..., Any]) -> Callable[..., Any]:
    def _compute_advantage(self: PPOTrainer, batch: Any, metrics: dict) -> Any:
        if not uses_gtpo_estimator(self.config):
            return original(self, batch, metrics)
        _check_one_output_per_session(batch.keys)
        responses, entropy = _fetch_responses_and_entropy(batch)
        with gtpo_batch(responses, entropy) as inputs:
            result = original(self, batch, metrics)
        metrics.update(inputs.metrics)
        return result

    return _compute_advantage


def _step_folder(trainer_config: Any, global_steps: int) -> str:
    """The ``global_step_<N>`` folder verl's v1 trainer saves to and, in ``auto`` mode, resumes from."""
    if trainer_config.resume_mode == "resume_path":
        return os.path.abspath(trainer_config.resume_from_path)
    return os.path.join(os.path.abspath(trainer_config.default_local_dir), f"global_step_{global_steps}")


def _hook_v1_save_checkpoint(original: Callable[..., Any]) -> Callable[..., Any]:
    def _save_checkpoint(self: PPOTrainer) -> Any:
        if uses_gtpo_estimator(self.config):
            # Written before verl records this step as the latest checkpoint, so a resume never misses it.
            folder = os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")
            save_state(self.config.algorithm, folder)
        return original(self)

    return _save_checkpoint


def _hook_v1_load_checkpoint(original: Callable[..., Any]) -> Callable[..., Any]:
    def _load_checkpoint(self: PPOTrainer) -> Any:
        result = original(self)
        if uses_gtpo_estimator(self.config) and self.global_steps > 0:
            load_state(self.config.algorithm, _step_folder(self.config.trainer, self.global_steps))
        return result

    return _load_checkpoint


def _hook_legacy_init(original: Callable[..., Any]) -> Callable[..., Any]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        config = kwargs["config"] if "config" in kwargs else (args[0] if args else None)
        if config is not None and uses_gtpo_estimator(config):
            raise ValueError(
                "algorithm.adv_estimator=gtpo runs on verl's v1 trainer only: set trainer.use_v1=true (verl's "
                "default). "
                "The legacy RayPPOTrainer (trainer.use_v1=false, deprecated) and the experimental trainers built on it "
                "discard the old policy's per-token entropy that GTPO needs."
            )
        original(self, *args, **kwargs)

    return __init__
