"""GTPO inside verl 0.9.0 and 0.9.1: the advantage estimator ``gtpo``, the policy loss ``gtpo`` and the trainer hooks.

verl imports this module itself, in every process that imports ``verl``, through the entry point
``gtpo = "gtpo_plugin.verl_adapter"`` of the group ``verl.plugins`` (``VERL_USE_EXTERNAL_PLUGINS``,
default ``auto``). Loading it:

1. checks that the installed verl is a supported version (:data:`SUPPORTED_VERL_VERSIONS`) and
   raises ``ImportError`` naming them otherwise, rather than computing something else;
2. registers the advantage estimator ``gtpo`` (:mod:`.estimator`) and the policy loss ``gtpo``
   (:mod:`.policy_loss`) in verl's registries when ``verl.trainer.ppo.core_algos``, where they live,
   is imported;
3. installs the trainer hooks (:mod:`.trainer_hooks`, the one module that changes verl's code paths)
   on each of verl's trainer modules when it is imported (:data:`TRAINER_HOOKS`).

Steps 2 and 3 run at once for modules imported before the plugin, otherwise right after the module's
own code (:mod:`.import_hooks`), so the order of imports does not matter. Deferring them keeps loading
the plugin cheap in a process that never imports verl's trainers (a Ray worker): ``core_algos`` alone
pulls in ``verl.workers.config`` and transformers, the trainer modules a few seconds more.

verl logs a plugin that fails to import at debug level only; this module logs the failure at
warning level before re-raising. ``VERL_USE_EXTERNAL_MODULES=gtpo_plugin.verl_adapter`` imports it
through verl's other mechanism, which lets the exception stop the process (the loud way).

Contract for code that calls verl's advantage stage directly (the CPU demo, tests)
--------------------------------------------------------------------------------

::

    import verl  # loads this plugin
    from verl import DataProto
    from verl.trainer.ppo.ray_trainer import compute_advantage

    algorithm = {"adv_estimator": "gtpo", "norm_adv_by_std_in_grpo": True,
                 "gtpo": {"amplification": 2.0, "entropy_coef": 0.1, "entropy_threshold": 0.6931,
                          "conflict_mode": "prefix_suffix", "initial_entropy": None}}
    data = DataProto.from_dict(
        tensors={"responses": responses, "response_mask": response_mask,
                 "token_level_rewards": token_level_rewards, "entropy": entropy},
        non_tensors={"uid": uid},
    )
    data = compute_advantage(data, adv_estimator="gtpo", config=algorithm)
    data.batch["advantages"]        # [B, L] GTPO advantages (also data.batch["returns"])
    data.meta_info["gtpo_metrics"]  # {"gtpo/protected_token_frac": ..., ...} for this batch

- **Inputs.** ``responses`` LongTensor ``[B, L]``, ``response_mask`` ``[B, L]`` (0/1; 1 on the model's
  own tokens, 0 on padding and on tool or user tokens inside multi-turn completions),
  ``token_level_rewards`` ``[B, L]`` (R_i is the row sum), ``entropy`` float ``[B, L]`` per-token
  entropy in nats of the policy that sampled the batch, ``uid`` the group id per row.
- **Configuration.** ``config`` is verl's ``algorithm`` section, an OmegaConf ``DictConfig`` or a
  plain dict. GTPO's knobs are under its ``gtpo`` key (``amplification``, ``entropy_coef``,
  ``entropy_threshold``, ``conflict_mode``, ``initial_entropy``); absent keys take the defaults
  of :class:`gtpo_plugin.GTPOConfig`, unknown keys are an error. ``norm_adv_by_std_in_grpo`` is
  read from ``config`` (default true), as verl's registered estimators do; passing the keyword
  ``norm_adv_by_std_in_grpo`` with a different value is an error rather than silently ignored.
- **⟨H⟩_ini state.** It lives in that config object, at ``config["gtpo"]["initial_entropy"]``.
  When it is null, the first call measures ⟨H⟩_ini on its batch (the mean over completions of
  ⟨H⟩_i) and writes the value there; later calls read it. So pass the same config object at
  every step (a fresh object starts a fresh run). In verl's trainers that object is
  ``trainer.config.algorithm``; the hooks save it to ``global_step_<N>/gtpo_state.json`` with
  each checkpoint and read it back on resume (:mod:`.state`).
- **Metrics.** ``compute_advantage`` puts this batch's five ``gtpo/*`` floats in
  ``data.meta_info["gtpo_metrics"]``. In verl's trainers the hooks add them to the step's
  metrics, which verl sends to the loggers the user chose (``trainer.logger``).
- **Errors.** Calling the registered estimator without ``responses`` and ``entropy`` available
  (for example from a trainer the hooks do not cover) raises ``RuntimeError`` naming what is
  missing; it never falls back to GRPO.

In a training run nothing of this is needed: set ``algorithm.adv_estimator=gtpo`` and
``actor_rollout_ref.actor.policy_loss.loss_mode=gtpo`` (README, "Use with verl").
"""

from __future__ import annotations

import logging
from types import ModuleType

import verl

from gtpo_plugin.verl_adapter import import_hooks

logger = logging.getLogger(__name__)

SUPPORTED_VERL_VERSIONS = ("0.9.0", "0.9.1")


def check_verl_version(version: str) -> None:
    """Raise ``ImportError`` unless ``version`` is one the adapter was written and tested against."""
    if version not in SUPPORTED_VERL_VERSIONS:
        raise ImportError(
            f"gtpo_plugin.verl_adapter supports verl {', '.join(SUPPORTED_VERL_VERSIONS)} only, found verl {version}; "
            f"install a supported version (e.g. pip install 'verl[verl-core]=={SUPPORTED_VERL_VERSIONS[-1]}') or "
            "uninstall gtpo-plugin. "
            "The adapter patches verl's trainers and would not be correct on another version."
        )


#: verl's trainer modules and the :mod:`.trainer_hooks` function that hooks each when it is imported.
TRAINER_HOOKS = {
    "verl.trainer.ppo.ray_trainer": "install_ray_trainer",
    "verl.trainer.ppo.v1.utils": "install_v1_utils",
    "verl.trainer.ppo.v1.trainer_base": "install_v1_trainer",
    "verl.experimental.separation.ray_trainer": "install_separation",
    "verl.experimental.one_step_off_policy.ray_trainer": "install_one_step_off",
    "verl.experimental.fully_async_policy.fully_async_trainer": "install_fully_async",
}


def _register(core_algos: ModuleType) -> None:
    """Put ``gtpo`` in verl's estimator and policy-loss registries (``core_algos`` has just been imported).

    Each module registers its function when its own code ends: when one of them is what is importing
    ``core_algos`` right now, it is still half-initialised here and registers a moment later.
    """
    from gtpo_plugin.verl_adapter import estimator, policy_loss  # noqa: F401 (imported to register)

    logger.info("GTPO plugin: adv_estimator 'gtpo' and policy loss 'gtpo' registered")


def _hook_trainer(module: ModuleType) -> None:
    """Install the trainer hooks of ``module``, one of :data:`TRAINER_HOOKS` (it has just been imported)."""
    from gtpo_plugin.verl_adapter import trainer_hooks

    getattr(trainer_hooks, TRAINER_HOOKS[module.__name__])(module)
    logger.info("GTPO plugin: trainer hooks installed on %s", module.__name__)


def _load() -> None:
    check_verl_version(verl.__version__)
    # Nothing verl-specific is imported before the version check: on another verl it could fail obscurely.
    import_hooks.when_imported("verl.trainer.ppo.core_algos", _register)
    for module_name in TRAINER_HOOKS:  # in dependency order, for modules imported before the plugin
        import_hooks.when_imported(module_name, _hook_trainer)


try:
    _load()
except Exception:
    logger.warning(
        "gtpo_plugin.verl_adapter failed to load, so algorithm.adv_estimator=gtpo and policy_loss.loss_mode=gtpo "
        "are NOT available in this process; set VERL_USE_EXTERNAL_MODULES=gtpo_plugin.verl_adapter to make "
        "verl stop on this error",
        exc_info=True,
    )
    raise
