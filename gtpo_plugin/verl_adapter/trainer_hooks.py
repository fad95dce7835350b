"""The one place where the GTPO plugin changes verl's code paths (verl 0.9.0 and 0.9.1).

Each hook wraps a verl function, calls the original, and acts only when the run selects
``algorithm.adv_estimator=gtpo`` (the start-up checks also for ``loss_mode=gtpo``); for every other run
they pass straight through. The ``install_*`` functions take the verl module they hook and run when it
is imported (:data:`gtpo_plugin.verl_adapter.TRAINER_HOOKS`); installing twice changes nothing.

- ``verl.trainer.ppo.ray_trainer.compute_advantage``: when the ``DataProto`` holds ``responses``
  and ``entropy``, makes them visible to the ``gtpo`` estimator and puts the batch's GTPO metrics
  in ``data.meta_info["gtpo_metrics"]`` (``verl.trainer.ppo.v1.utils``, which imports the function
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
- ``SeparateRayPPOTrainer`` (``verl.experimental.separation``) and the trainers built on it,
  ``OneStepOffRayTrainer`` (one-step-off-policy) and ``FullyAsyncTrainer`` (fully async), which run
  their step as ``_fit_compute_log_prob`` → ... → ``_fit_compute_advantage`` on a ``DataProto``:

  - ``_compute_old_log_prob``: keeps a reference to the old policy's per-token entropy under
    :data:`OLD_ENTROPY`, which ``_fit_compute_log_prob`` merges into the batch (verl itself pops it);
  - ``_fit_compute_advantage``: takes it out of the batch again (the actor update never sees it),
    hands it and ``responses`` to the estimator, and adds the GTPO metrics to ``self.metrics``;
  - start-up checks: ``SeparateRayPPOTrainer`` runs them through ``RayPPOTrainer.__init__`` (below);
    the one-step-off and fully-async trainers never call it and get their own ``__init__`` hook;
  - ``_save_checkpoint`` / ``_load_checkpoint`` (``load_checkpoint`` for fully async, whose step
    folders count parameter versions): ⟨H⟩_ini as for v1.
- legacy trainer ``RayPPOTrainer`` (``trainer.use_v1=false``, deprecated): its ``fit`` discards the
  old-log-prob entropy, so with ``adv_estimator=gtpo`` its ``__init__`` stops with an error saying
  which trainers to use. A subclass passes when it keeps the hooked ``_fit_compute_advantage`` of
  ``SeparateRayPPOTrainer`` (its step then supplies the entropy, or that hook raises).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
from collections import Counter
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import torch
import transfer_queue as tq

from gtpo_plugin.verl_adapter.estimator import gtpo_batch
from gtpo_plugin.verl_adapter.settings import (
    GTPO,
    check_trainer_config,
    norm_adv_by_std,
    uses_gtpo_estimator,
    uses_gtpo_loss,
)
from gtpo_plugin.verl_adapter.state import load_state, save_state

_MARK = "__gtpo_hook__"

#: Batch field under which the separation-family hooks carry the old policy's entropy, ``[B, L]``.
OLD_ENTROPY = "gtpo_old_entropy"

#: What the refusal of a trainer that cannot give GTPO its entropy recommends.
SUPPORTED_TRAINERS = (
    "verl's v1 trainer (trainer.use_v1=true, verl's default: python3 -m verl.trainer.main_ppo), the one-step-off "
    "trainer (python3 -m verl.experimental.one_step_off_policy.main_ppo) or the fully async trainer "
    "(python3 -m verl.experimental.fully_async_policy.fully_async_main)"
)


def _wrap(owner: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Replace ``owner.name`` with ``make(original)``, once (installing twice is a no-op)."""
    original = getattr(owner, name)
    if getattr(original, _MARK, False):
        return
    wrapper = functools.wraps(original)(make(original))
    setattr(wrapper, _MARK, True)
    setattr(owner, name, wrapper)


def is_hooked(function: Any) -> bool:
    """Whether ``function`` is one of this module's wrappers."""
    return bool(getattr(function, _MARK, False))


def install_ray_trainer(module: ModuleType) -> None:
    """``verl.trainer.ppo.ray_trainer``: ``compute_advantage`` and the legacy trainer's ``__init__``."""
    _wrap(module, "compute_advantage", _hook_compute_advantage)
    _wrap(module.RayPPOTrainer, "__init__", _hook_legacy_init)


def install_v1_utils(module: ModuleType) -> None:
    """``verl.trainer.ppo.v1.utils`` bound ``compute_advantage`` by name; point it at the wrapper."""
    ray_trainer = importlib.import_module("verl.trainer.ppo.ray_trainer")  # imported, and hooked, before it
    setattr(module, "compute_advantage", ray_trainer.compute_advantage)  # noqa: B010 (mypy: ModuleType)


def install_v1_trainer(module: ModuleType) -> None:
    """``verl.trainer.ppo.v1.trainer_base``: the v1 ``PPOTrainer`` (all three trainer modes)."""
    trainer = module.PPOTrainer
    _wrap(trainer, "__init__", _hook_v1_init)
    _wrap(trainer, "_compute_advantage", _hook_v1_compute_advantage)
    _wrap(trainer, "_save_checkpoint", _hook_v1_save_checkpoint)
    _wrap(trainer, "_load_checkpoint", _hook_v1_load_checkpoint)


def install_separation(module: ModuleType) -> None:
    """``verl.experimental.separation.ray_trainer``: the step of ``SeparateRayPPOTrainer`` and its subclasses."""
    trainer = module.SeparateRayPPOTrainer
    _wrap(trainer, "_compute_old_log_prob", _hook_separate_compute_old_log_prob)
    _wrap(trainer, "_fit_compute_advantage", _hook_separate_fit_compute_advantage)
    _wrap(trainer, "_save_checkpoint", _hook_v1_save_checkpoint)  # same folder layout as v1's
    _wrap(trainer, "_load_checkpoint", _hook_v1_load_checkpoint)


def install_one_step_off(module: ModuleType) -> None:
    """``verl.experimental.one_step_off_policy.ray_trainer``: start-up checks (its ``__init__`` is its own)."""
    _wrap(module.OneStepOffRayTrainer, "__init__", _hook_start_up_checks)


def install_fully_async(module: ModuleType) -> None:
    """``verl.experimental.fully_async_policy.fully_async_trainer``: start-up checks and ⟨H⟩_ini checkpoints.

    ``FullyAsyncTrainer`` there is a Ray actor class. When verl's module defined it, Ray copied every
    method of verl's class into the subclass it runs (wrapped for tracing), so the hooks go on that
    subclass, which Ray ships by value to the actor's process, hooks included. Its copy of
    ``_fit_compute_advantage`` already wraps the hooked one unless the module was imported before the plugin.
    """
    trainer = module.FullyAsyncTrainer.__ray_metadata__.modified_class
    _wrap(trainer, "_fit_compute_advantage", _hook_separate_fit_compute_advantage)
    _wrap(trainer, "__init__", _hook_start_up_checks)
    _wrap(trainer, "_save_checkpoint", _hook_fully_async_save_checkpoint)
    _wrap(trainer, "load_checkpoint", _hook_fully_async_load_checkpoint)


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
    def __init__(self: Any, config: Any, *args: Any, **kwargs: Any) -> None:
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
    def _compute_advantage(self: Any, batch: Any, metrics: dict) -> Any:
        if not uses_gtpo_estimator(self.config):
            return original(self, batch, metrics)
        _check_one_output_per_session(batch.keys)
        responses, entropy = _fetch_responses_and_entropy(batch)
        with gtpo_batch(responses, entropy) as inputs:
            result = original(self, batch, metrics)
        metrics.update(inputs.metrics)
        return result

    return _compute_advantage


def _save_folder(trainer_config: Any, step: int) -> str:
    """``<default_local_dir>/global_step_<step>``, the folder verl's trainers save a checkpoint to."""
    return os.path.join(os.path.abspath(trainer_config.default_local_dir), f"global_step_{step}")


def _step_folder(trainer_config: Any, global_steps: int) -> str:
    """The ``global_step_<N>`` folder verl's v1 trainer saves to and, in ``auto`` mode, resumes from."""
    if trainer_config.resume_mode == "resume_path":
        return os.path.abspath(trainer_config.resume_from_path)
    return _save_folder(trainer_config, global_steps)


def _hook_save_checkpoint(step_attribute: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A ``_save_checkpoint`` hook that writes ⟨H⟩_ini into the step's folder first; the step is
    ``self.<step_attribute>`` (``global_steps``; the fully async trainer names its folders after
    ``current_param_version``)."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def _save_checkpoint(self: Any) -> Any:
            if uses_gtpo_estimator(self.config):
                # Written before verl records this step as the latest checkpoint, so a resume never misses it.
                save_state(self.config.algorithm, _save_folder(self.config.trainer, getattr(self, step_attribute)))
            return original(self)

        return _save_checkpoint

    return make


_hook_v1_save_checkpoint = _hook_save_checkpoint("global_steps")
_hook_fully_async_save_checkpoint = _hook_save_checkpoint("current_param_version")


def _hook_v1_load_checkpoint(original: Callable[..., Any]) -> Callable[..., Any]:
    def _load_checkpoint(self: Any) -> Any:
        result = original(self)
        if uses_gtpo_estimator(self.config) and self.global_steps > 0:
            load_state(self.config.algorithm, _step_folder(self.config.trainer, self.global_steps))
        return result

    return _load_checkpoint


def _hook_start_up_checks(original: Callable[..., Any]) -> Callable[..., Any]:
    """``__init__`` of a trainer that sets ``self.config`` itself: the start-up checks, then verl's code."""
    def __init__(self: Any, config: Any, *args: Any, **kwargs: Any) -> None:
        check_trainer_config(config)
        original(self, config, *args, **kwargs)

    return __init__


def _supplies_gtpo_inputs(trainer_class: type) -> bool:
    """Whether ``trainer_class`` runs its advantage step through the hooked ``SeparateRayPPOTrainer`` method.

    (An override of ``_compute_old_log_prob`` that calls verl's, as the fully async trainer's does, still
    supplies the entropy; one that does not is caught by ``_fit_compute_advantage`` at the first step.)
    """
    return is_hooked(getattr(trainer_class, "_fit_compute_advantage", None))


def _hook_legacy_init(original: Callable[..., Any]) -> Callable[..., Any]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        config = kwargs["config"] if "config" in kwargs else (args[0] if args else None)
        if config is not None and uses_gtpo_estimator(config) and not _supplies_gtpo_inputs(type(self)):
            raise ValueError(
                f"algorithm.adv_estimator=gtpo does not run on {type(self).__name__}: the legacy trainer "
                "(trainer.use_v1=false, deprecated) discards the old policy's per-token entropy that GTPO needs. "
                f"Use {SUPPORTED_TRAINERS}."
            )
        if config is not None and (uses_gtpo_estimator(config) or uses_gtpo_loss(config)):
            check_trainer_config(config)
        original(self, *args, **kwargs)

    return __init__


def _hook_separate_compute_old_log_prob(original: Callable[..., Any]) -> Callable[..., Any]:
    def _compute_old_log_prob(self: Any, batch: Any) -> Any:
        old_log_prob, *rest = original(self, batch)
        if uses_gtpo_estimator(self.config):
            # verl pops "entropys" before merging this into the batch; a second name keeps it there.
            old_log_prob.batch[OLD_ENTROPY] = old_log_prob.batch["entropys"]
        return (old_log_prob, *rest)

    return _compute_old_log_prob


def _hook_separate_fit_compute_advantage(original: Callable[..., Any]) -> Callable[..., Any]:
    def _fit_compute_advantage(self: Any, batch: Any) -> Any:
        if not uses_gtpo_estimator(self.config):
            return original(self, batch)
        if OLD_ENTROPY not in batch.batch:
            raise RuntimeError(
                f"adv_estimator 'gtpo' found no old-policy entropy in {type(self).__name__}'s batch: the old-log-prob "
                "pass did not run (algorithm.rollout_correction.bypass_mode=true skips it) or the trainer overrides "
                "_fit_compute_log_prob/_compute_old_log_prob; GTPO needs it"
            )
        entropy = batch.batch.pop(OLD_ENTROPY)  # not sent on to the actor update
        with gtpo_batch(batch.batch["responses"], entropy) as inputs:
            batch = original(self, batch)
        self.metrics.update(inputs.metrics)
        return batch

    return _fit_compute_advantage


def _hook_fully_async_load_checkpoint(original: Callable[..., Any]) -> Callable[..., Any]:
    async def load_checkpoint(self: Any) -> Any:
        result = await original(self)
        if uses_gtpo_estimator(self.config) and self.current_param_version > 0:
            load_state(self.config.algorithm, _step_folder(self.config.trainer, self.current_param_version))
        return result

    return load_checkpoint
