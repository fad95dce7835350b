"""GTPO inside verl: the advantage estimator ``gtpo``, the policy loss ``gtpo`` and the trainer hooks.

verl imports this module itself, in every process that imports ``verl``, through the entry point
``gtpo = "gtpo_plugin.verl_adapter"`` of the group ``verl.plugins`` (``VERL_USE_EXTERNAL_PLUGINS``,
default ``auto``). Loading it never raises into verl's import and imports nothing of verl's trainers; it:

1. logs one warning if verl's version is not one CI tests (:data:`.seam.TESTED_VERL_VERSIONS`);
2. when ``verl.trainer.ppo.core_algos`` is imported, probes its registries and registers the estimator
   ``gtpo`` (:mod:`.estimator`) and the policy loss ``gtpo`` (:mod:`.policy_loss`);
3. when each of verl's trainer modules is imported, probes and hooks it (:data:`.trainer_hooks.SEAMS`).

Steps 2 and 3 run at once for modules imported before the plugin, otherwise right after the module's
own code (:mod:`.import_hooks`), so the order of imports does not matter and a Ray worker that never
imports the trainers pays nothing for them. A failed probe marks a component unavailable (:mod:`.seam`):
the module imports, other estimators and losses are untouched, and a run selecting ``gtpo`` on a trainer
that needs the component is refused when the trainer is constructed, naming the attribute and version.

The contact surface, one row per verl internal: what the plugin does there, what happens when it changes,
the test that shows it (``[x]``: scenario x of ``test_verl_changes.py``). docs/verl-seam.md has the same
table with each internal's file and more words::

  verl internal                          | plugin does          | when it changes      | test
  ---------------------------------------+----------------------+----------------------+---------------------------
  verl.plugins entry point (__init__.py) | loads this module    | logged, never raised | registration tests
  trainer modules' loaders               | hooks after import   | raising hook skipped | test_verl_plugin_load
  core_algos registries, agg_loss        | registers gtpo       | refused everywhere   | [register_adv_est_renamed]
  ray_trainer.compute_advantage          | fields, direct calls | refused everywhere   | [compute_advantage_*]
  RayPPOTrainer.__init__                 | legacy refusal       | legacy refused       | test_verl_trainers
  RayPPOTrainer._compute_old_log_prob,   | old entropy kept;    | separation refused   | [ray_trainer_*_renamed]
    _save/_load_checkpoint (separation)  | <H>_ini state        |                      |
  v1 PPOTrainer.__init__                 | start-up checks      | (kept, refuses)      | every v1 scenario
  v1 PPOTrainer._compute_advantage       | fields from TQ       | v1 refused           | [v1_compute_advantage_*]
  v1 PPOTrainer._save/_load_checkpoint   | <H>_ini state        | v1 refused           | [v1_*_checkpoint_*]
  v1.utils.compute_advantage_for_multi_* | session keys (read)  | v1 refused           | [v1_session_keys_changed]
  tq.kv_batch_get (in trainer_base)      | + GTPO's two fields  | v1 refused           | test_verl_trainers
  Separate..._fit_compute_advantage      | entropy to estimator | separation refused   | [separation_fit_*]
  OneStepOffRayTrainer.__init__          | start-up checks      | one-step-off refused | experimental tests
  FullyAsyncTrainer (Ray's copy)         | the same four hooks  | fully async refused  | [fully_async_*_renamed]
  ActorConfig.global_batch_info          | agg_loss's sizes     | the loss raises      | test_verl_policy_loss
  TOKEN_LEVEL_ROLLOUT_RS_OPTIONS         | not used (own list)  | nothing              | [token_level_*_renamed]

With verl patched by ``upstream/estimator-batch-fields.patch`` (estimators declare batch fields), the
estimator registers with ``batch_fields=("responses", "entropy")`` and the two advantage-path hooks
(``compute_advantage``, v1 ``_compute_advantage``) are not installed.

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
  missing (and any component found unavailable); it never falls back to GRPO.

In a training run nothing of this is needed: set ``algorithm.adv_estimator=gtpo`` and
``actor_rollout_ref.actor.policy_loss.loss_mode=gtpo`` (README, "Use with verl").
"""

from __future__ import annotations

import logging
from types import ModuleType

from gtpo_plugin.verl_adapter import import_hooks, seam

logger = logging.getLogger(__name__)

#: verl's trainer modules the plugin hooks when they are imported (:data:`.trainer_hooks.SEAMS`), in dependency order.
TRAINER_MODULES = (
    "verl.trainer.ppo.ray_trainer",
    "verl.trainer.ppo.v1.trainer_base",
    "verl.experimental.separation.ray_trainer",
    "verl.experimental.one_step_off_policy.ray_trainer",
    "verl.experimental.fully_async_policy.fully_async_trainer",
)


def probe_registries(core_algos: ModuleType) -> None:
    """Probe what the registration uses in ``core_algos``; raises :class:`.seam.ProbeError`."""
    name = core_algos.__name__
    for registry in ("ADV_ESTIMATOR_REGISTRY", "POLICY_LOSS_REGISTRY"):
        if not isinstance(seam.attribute(core_algos, registry, f"{name}.{registry}"), dict):
            raise seam.ProbeError(f"{name}.{registry}", "is not a dict any more")
    for register in ("register_adv_est", "register_policy_loss"):
        seam.parameters(seam.attribute(core_algos, register, f"{name}.{register}"), f"{name}.{register}",
                        leading=("name_or_enum",) if register == "register_adv_est" else ("name",))
    agg_loss = seam.attribute(core_algos, "agg_loss", f"{name}.agg_loss")
    seam.parameters(agg_loss, f"{name}.agg_loss", leading=("loss_mat", "loss_mask", "loss_agg_mode"),
                    named=("dp_size", "batch_num_tokens", "global_batch_size", "loss_scale_factor"))


def _register(core_algos: ModuleType) -> None:
    """Put ``gtpo`` in verl's estimator and policy-loss registries (``core_algos`` has just been imported).

    Each module registers its function when its own code ends: when one of them is what is importing
    ``core_algos`` right now, it is still half-initialised here and registers a moment later.
    """
    try:
        probe_registries(core_algos)
        seam.estimators_declare_batch_fields(core_algos)
        from gtpo_plugin.verl_adapter import estimator, policy_loss  # noqa: F401 (imported to register)
    except seam.ProbeError as error:
        seam.mark_unavailable("registries", error.attribute, error.problem)
        return
    except Exception as error:  # anything else in verl's registries: contained, named
        seam.mark_unavailable("registries", core_algos.__name__, f"refused GTPO's registration ({error!r})")
        return
    logger.info("GTPO plugin: adv_estimator 'gtpo' and policy loss 'gtpo' registered")


def _hook_trainer(module: ModuleType) -> None:
    """Probe and hook ``module``, one of :data:`TRAINER_MODULES` (it has just been imported)."""
    from gtpo_plugin.verl_adapter import trainer_hooks

    trainer_hooks.install(module)
    logger.info("GTPO plugin: trainer hooks installed on %s", module.__name__)


def _load() -> None:
    seam.warn_if_untested(seam.verl_version())
    import_hooks.when_imported("verl.trainer.ppo.core_algos", _register)
    for module_name in TRAINER_MODULES:  # in dependency order, for modules imported before the plugin
        import_hooks.when_imported(module_name, _hook_trainer)


try:
    _load()
except Exception:  # never take verl's import down; a GTPO run then fails at its first 'gtpo' lookup
    logger.error("gtpo_plugin.verl_adapter failed to load, so algorithm.adv_estimator=gtpo and "
                 "policy_loss.loss_mode=gtpo are NOT available in this process", exc_info=True)
