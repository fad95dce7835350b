"""The one place where the GTPO plugin changes verl's code paths, and the probes that guard each change.

:data:`SEAMS` lists, per verl module, every verl function the plugin wraps (or only reads), what it
expects of it, and the component of GTPO it belongs to. :func:`install` runs when that module is
imported: it probes every entry first (:mod:`.seam`); a component whose probe fails is marked
unavailable and none of its hooks is installed, while the start-up hooks (trainer ``__init__``) are
installed whenever their own probe passes, so that a GTPO run is refused at construction with the
reason. Installing never raises and installing twice changes nothing.

Each wrapper calls verl's original and acts only when the run selects ``algorithm.adv_estimator=gtpo``
(the start-up checks also for ``loss_mode=gtpo``); every other run passes straight through, whatever
arguments verl passes. What each hook does is in the adapter's contact table
(:mod:`gtpo_plugin.verl_adapter`, and docs/verl-seam.md).
"""

from __future__ import annotations

import functools
import inspect
import os
from collections import Counter
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
import transfer_queue as tq

from gtpo_plugin.verl_adapter import seam
from gtpo_plugin.verl_adapter.batch_inputs import gtpo_batch, right_padded, token_id_dtype
from gtpo_plugin.verl_adapter.settings import (
    GTPO,
    check_trainer_config,
    check_v1_trainer_config,
    norm_adv_by_std,
    uses_gtpo,
    uses_gtpo_estimator,
)
from gtpo_plugin.verl_adapter.state import load_state, save_state

Make = Callable[[Callable[..., Any]], Callable[..., Any]]

_MARK = "__gtpo_hook__"
_CHECKED = "_gtpo_start_up_checked"  # set on a trainer whose start-up checks ran

#: Batch field under which the separation-family hooks carry the old policy's entropy, ``[B, L]``.
OLD_ENTROPY = "gtpo_old_entropy"

#: What the refusal of a trainer that cannot give GTPO its entropy recommends.
SUPPORTED_TRAINERS = (
    "verl's v1 trainer (trainer.use_v1=true, verl's default: python3 -m verl.trainer.main_ppo), the one-step-off "
    "trainer (python3 -m verl.experimental.one_step_off_policy.main_ppo) or the fully async trainer "
    "(python3 -m verl.experimental.fully_async_policy.fully_async_main)"
)

#: The components each trainer family needs (:mod:`.seam`); the start-up hooks refuse GTPO when one is unavailable.
V1 = (*seam.CORE, "v1")
LEGACY = (*seam.CORE, "legacy", "separation")
ONE_STEP_OFF = (*LEGACY, "one_step_off")
FULLY_ASYNC = (*seam.CORE, "separation", "fully_async")


def is_hooked(function: Any) -> bool:
    """Whether ``function`` is one of this module's wrappers."""
    return bool(getattr(function, _MARK, False))


def _wrap(owner: Any, name: str, make: Make) -> None:
    """Replace ``owner.name`` with ``make(original)``, once (installing twice is a no-op)."""
    original = getattr(owner, name)
    if is_hooked(original):
        return
    wrapper = functools.wraps(original)(make(original))
    setattr(wrapper, _MARK, True)
    setattr(owner, name, wrapper)


def _config_of(original: Callable[..., Any], self: Any, args: tuple, kwargs: dict) -> Any:
    """The ``config`` argument of a trainer's ``__init__`` call (None when it cannot be bound)."""
    try:
        return inspect.signature(original).bind_partial(self, *args, **kwargs).arguments.get("config")
    except TypeError:
        return None


def run_start_up_checks(trainer: Any, config: Any, components: Sequence[str], *, v1: bool = False) -> None:
    """Refuse a GTPO run whose trainer needs an unavailable component, then check its settings; marks ``trainer``."""
    if config is not None and uses_gtpo(config):
        seam.refuse_if_unavailable(components, type(trainer).__name__)
        check_trainer_config(config)
        if v1:
            check_v1_trainer_config(config)
    trainer.__dict__[_CHECKED] = True


def _ensure_start_up_checks(trainer: Any, components: Sequence[str], *, v1: bool = False) -> None:
    """At a GTPO step: run the start-up checks if construction skipped them (no ``super().__init__``)."""
    if not trainer.__dict__.get(_CHECKED, False):
        run_start_up_checks(trainer, trainer.config, components, v1=v1)


def _hook_start_up(components: Sequence[str], *, v1: bool = False) -> Make:
    """``__init__`` of a trainer: the start-up checks (refusal included), then verl's code."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            run_start_up_checks(self, _config_of(original, self, args, kwargs), components, v1=v1)
            original(self, *args, **kwargs)

        return __init__

    return make


def _hook_legacy_init(original: Callable[..., Any]) -> Callable[..., Any]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        config = _config_of(original, self, args, kwargs)
        if config is not None and uses_gtpo_estimator(config) and not _supplies_gtpo_inputs(type(self)):
            seam.refuse_if_unavailable(LEGACY, type(self).__name__)
            raise ValueError(
                f"algorithm.adv_estimator=gtpo does not run on {type(self).__name__}: the legacy trainer "
                "(trainer.use_v1=false, deprecated) discards the old policy's per-token entropy that GTPO needs. "
                f"Use {SUPPORTED_TRAINERS}."
            )
        run_start_up_checks(self, config, LEGACY)
        original(self, *args, **kwargs)

    return __init__


def _supplies_gtpo_inputs(trainer_class: type) -> bool:
    """Whether ``trainer_class`` runs its advantage step through the hooked ``SeparateRayPPOTrainer`` method.

    (An override of ``_compute_old_log_prob`` that calls verl's, as the fully async trainer's does, still
    supplies the entropy; one that does not is caught by ``_fit_compute_advantage`` at the first step.)
    """
    return is_hooked(getattr(trainer_class, "_fit_compute_advantage", None))


def _hook_compute_advantage(original: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(original)

    def compute_advantage(*args: Any, **kwargs: Any) -> Any:
        try:
            call = signature.bind(*args, **kwargs).arguments  # the arguments given, without defaults
        except TypeError:
            return original(*args, **kwargs)  # verl's own error for a call it does not accept
        data, estimator = call["data"], call.get("adv_estimator")
        batch = getattr(data, "batch", None)
        fields = set(batch.keys()) if batch is not None else set()
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


def check_one_output_per_session(keys: Sequence[str]) -> None:
    """Refuse agent loops that return several outputs per session.

    verl's agent loop stores output ``i`` of session ``s`` of prompt ``uid`` under the TransferQueue key
    ``{uid}_{s}_{i}``, and verl's own handling of several outputs per session
    (``v1.utils.compute_advantage_for_multi_trajectories``, probed) groups rows by ``key.rsplit("_", 2)``;
    this check groups them the same way. verl computes GRPO on each session's last output only and copies
    that one number to its other outputs; GTPO's advantage is per token, set by positions within one
    completion, so it has no such counterpart. A key not in that format is an error, not a pass.
    """
    sessions: Counter[str] = Counter()
    for key in keys:
        fields = key.rsplit("_", 2)
        if len(fields) != 3 or not fields[2].isdigit():
            raise ValueError(f"TransferQueue key {key!r} is not verl's '{{uid}}_{{session_id}}_{{index}}'; the GTPO "
                             "plugin cannot tell whether an agent-loop session returned several outputs")
        sessions[f"{fields[0]}_{fields[1]}"] += 1
    repeated = [session for session, count in sessions.items() if count > 1]
    if repeated:
        raise NotImplementedError(
            f"adv_estimator 'gtpo' supports one output per agent-loop session; sessions {repeated[:3]} have several. "
            "Use an agent loop that returns a single output per trajectory."
        )


GTPO_FIELDS = ("responses", "entropy")


def _require_entropy(entropy: torch.Tensor | None) -> torch.Tensor:
    if entropy is None:
        raise RuntimeError(
            "adv_estimator 'gtpo' found no 'entropy' in TransferQueue for this batch: verl's old-log-prob pass did not "
            "run (algorithm.rollout_correction.bypass_mode=true skips it); GTPO needs it"
        )
    return entropy


def _padded_inputs(responses: torch.Tensor, entropy: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``responses`` (int32 when the ids fit) and ``entropy`` right-padded with 0 to ``[B, L]``. O(B·L)."""
    entropy = _require_entropy(entropy)
    return right_padded(responses, token_id_dtype(responses)), right_padded(entropy)


def _fetch_responses_and_entropy(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``responses`` and ``entropy`` of ``batch``, fetched on their own and padded (:func:`_padded_inputs`)."""
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=list(GTPO_FIELDS))
    return _padded_inputs(data.pop("responses"), data.pop("entropy", None))


@dataclass
class _Carried:
    """GTPO's fields taken out of verl's own fetch of the stage's batch (``keys``, ``partition_id``), still jagged."""

    keys: Any
    partition_id: str
    fields: dict[str, torch.Tensor | None] | None = None


#: Set while a GTPO advantage stage in this context has its fields added to verl's own fetch (one fetch, not two).
_ONE_FETCH: ContextVar[_Carried | None] = ContextVar("gtpo_one_fetch", default=None)


def _hook_v1_kv_batch_get(original: Callable[..., Any]) -> Callable[..., Any]:
    """``tq.kv_batch_get`` as verl's v1 trainer calls it: inside a one-fetch GTPO stage (:data:`_ONE_FETCH`), its
    first fetch of the stage's batch also brings ``responses`` and ``entropy``, taken out before verl sees them.
    Every other call, in every other context and thread, passes straight through."""
    signature = inspect.signature(original)

    def kv_batch_get(*args: Any, **kwargs: Any) -> Any:
        carried = _ONE_FETCH.get()
        if carried is None or carried.fields is not None:
            return original(*args, **kwargs)
        try:
            call = signature.bind(*args, **kwargs).arguments
        except TypeError:
            return original(*args, **kwargs)  # TransferQueue's own error
        fields = call.get("select_fields")
        if (call.get("partition_id") != carried.partition_id or list(call.get("keys") or ()) != list(carried.keys)
                or not isinstance(fields, list)):
            return original(*args, **kwargs)
        added = [name for name in GTPO_FIELDS if name not in fields]
        data = original(**{**call, "select_fields": [*fields, *added]})
        carried.fields = {name: data.pop(name, None) if name in added else data.get(name, None)
                          for name in GTPO_FIELDS}
        return data

    return kv_batch_get


def _rollout_correction_may_run(config: Any, batch: Any) -> bool:
    """Whether verl's ``_compute_advantage`` may run its rollout correction on ``batch`` (verl's own condition,
    read from the config and the fields the batch's metadata lists; unknown fields: it may)."""
    correction = config.algorithm.get("rollout_correction", None)
    if correction is None or correction.get("bypass_mode", False):
        return False
    fields = getattr(batch, "fields", None)
    return fields is None or "rollout_log_probs" in fields


def _load_inputs(batch: Any, carried: _Carried | None) -> tuple[torch.Tensor, torch.Tensor]:
    """GTPO's inputs for ``batch``, padded: those carried out of verl's fetch (then dropped), else fetched now."""
    fields = carried.fields if carried is not None else None
    if not fields or fields["responses"] is None:
        return _fetch_responses_and_entropy(batch)
    assert carried is not None
    carried.fields = {}
    return _padded_inputs(fields.pop("responses"), fields.pop("entropy"))  # type: ignore[arg-type]


def _hook_v1_compute_advantage(original: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(original)  # (self, batch, metrics), probed

    def _compute_advantage(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not uses_gtpo_estimator(self.config):
            return original(self, *args, **kwargs)
        _ensure_start_up_checks(self, V1, v1=True)
        call = signature.bind(self, *args, **kwargs).arguments
        batch, metrics = call["batch"], call["metrics"]
        check_one_output_per_session(batch.keys)
        # With verl's rollout correction coming, GTPO's inputs are fetched when the estimator runs, after it (held
        # during it they would raise its memory peak); without, verl's own fetch brings them (one call, not two).
        carried = None if _rollout_correction_may_run(self.config, batch) else _Carried(batch.keys, batch.partition_id)
        token = _ONE_FETCH.set(carried)
        try:
            with gtpo_batch(load=lambda: _load_inputs(batch, carried)) as inputs:
                result = original(self, *args, **kwargs)
        finally:
            _ONE_FETCH.reset(token)
        metrics.update(inputs.metrics)
        return result

    return _compute_advantage


def _save_folder(trainer_config: Any, step: int) -> str:
    """``<default_local_dir>/global_step_<step>``, as verl's ``_save_checkpoint`` builds it (source probed)."""
    return os.path.join(os.path.abspath(trainer_config.default_local_dir), f"global_step_{step}")


def _step_folder(trainer_config: Any, step: int) -> str:
    """The folder verl's ``_load_checkpoint`` resumes from (source probed): ``resume_from_path`` or the save folder."""
    if trainer_config.resume_mode == "resume_path":
        return os.path.abspath(trainer_config.resume_from_path)
    return _save_folder(trainer_config, step)


def _hook_save_checkpoint(step_attribute: str) -> Make:
    """A ``_save_checkpoint`` hook that writes ⟨H⟩_ini into the step's folder first; the step is
    ``self.<step_attribute>`` (``global_steps``; the fully async trainer names its folders after
    ``current_param_version``)."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def _save_checkpoint(self: Any, *args: Any, **kwargs: Any) -> Any:
            if uses_gtpo_estimator(self.config):
                # Written before verl records this step as the latest checkpoint, so a resume never misses it.
                save_state(self.config.algorithm, _save_folder(self.config.trainer, getattr(self, step_attribute)))
            return original(self, *args, **kwargs)

        return _save_checkpoint

    return make


def _hook_load_checkpoint(step_attribute: str) -> Make:
    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def _load_checkpoint(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(self, *args, **kwargs)
            step = getattr(self, step_attribute)
            if uses_gtpo_estimator(self.config) and step > 0:
                load_state(self.config.algorithm, _step_folder(self.config.trainer, step))
            return result

        return _load_checkpoint

    return make


def _hook_fully_async_load_checkpoint(original: Callable[..., Any]) -> Callable[..., Any]:
    async def load_checkpoint(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = await original(self, *args, **kwargs)
        if uses_gtpo_estimator(self.config) and self.current_param_version > 0:
            load_state(self.config.algorithm, _step_folder(self.config.trainer, self.current_param_version))
        return result

    return load_checkpoint


def _hook_separate_compute_old_log_prob(original: Callable[..., Any]) -> Callable[..., Any]:
    def _compute_old_log_prob(self: Any, *args: Any, **kwargs: Any) -> Any:
        old_log_prob, *rest = original(self, *args, **kwargs)
        if uses_gtpo_estimator(self.config):
            # verl pops "entropys" before merging this into the batch; a second name keeps it there.
            old_log_prob.batch[OLD_ENTROPY] = old_log_prob.batch["entropys"]
        return (old_log_prob, *rest)

    return _compute_old_log_prob


def _hook_separate_fit_compute_advantage(original: Callable[..., Any]) -> Callable[..., Any]:
    def _fit_compute_advantage(self: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        if not uses_gtpo_estimator(self.config):
            return original(self, batch, *args, **kwargs)
        _ensure_start_up_checks(self, (*seam.CORE, "separation"))
        if OLD_ENTROPY not in batch.batch:
            raise RuntimeError(
                f"adv_estimator 'gtpo' found no old-policy entropy in {type(self).__name__}'s batch: the old-log-prob "
                "pass did not run (algorithm.rollout_correction.bypass_mode=true skips it) or the trainer overrides "
                "_fit_compute_log_prob/_compute_old_log_prob; GTPO needs it"
            )
        entropy = batch.batch.pop(OLD_ENTROPY)  # not sent on to the actor update
        if seam.estimators_declare_batch_fields():  # verl hands the estimator its declared fields itself
            batch.batch["entropy"] = entropy
            batch = original(self, batch, *args, **kwargs)
            batch.batch.pop("entropy")
            self.metrics.update(batch.meta_info.pop("adv_estimator_metrics", {}))
            return batch
        with gtpo_batch(batch.batch["responses"], entropy) as inputs:
            batch = original(self, batch, *args, **kwargs)
        self.metrics.update(inputs.metrics)
        return batch

    return _fit_compute_advantage


@dataclass(frozen=True)
class Hook:
    """One verl function the plugin wraps (``make``) or only relies on (``make=None``), and its probes.

    ``owner`` is a dotted path inside the module ("" for the module itself); ``own``: defined on that
    class, not inherited; ``leading``/``named``: parameters (:func:`.seam.parameters`); ``source``:
    markers its source must hold. ``start_up`` hooks are installed even when the component's other probes fail.
    """

    component: str
    owner: str
    name: str
    make: Make | None
    leading: tuple[str, ...] = ("self",)
    named: tuple[str, ...] = ()
    own: bool = False
    source: tuple[str, ...] = ()
    start_up: bool = False
    advantage_path: bool = False  # not needed when verl passes estimators their declared fields (upstream/)


_V1_STEP_FOLDER = ('f"global_step_{self.global_steps}"', "default_local_dir")
_RESUME = ("resume_from_path", "find_latest_ckpt_path")

#: Everything the plugin touches in verl, per verl module; installed when that module is imported.
SEAMS: dict[str, tuple[Hook, ...]] = {
    "verl.trainer.ppo.ray_trainer": (
        Hook("compute_advantage", "", "compute_advantage", _hook_compute_advantage,
             leading=("data", "adv_estimator"), named=("config", "norm_adv_by_std_in_grpo"), advantage_path=True),
        Hook("legacy", "RayPPOTrainer", "__init__", _hook_legacy_init, leading=("self", "config"), own=True,
             start_up=True),
    ),
    "verl.trainer.ppo.v1.trainer_base": (
        Hook("v1", "PPOTrainer", "__init__", _hook_start_up(V1, v1=True), leading=("self", "config"), own=True,
             start_up=True),
        Hook("v1", "PPOTrainer", "_compute_advantage", _hook_v1_compute_advantage,
             leading=("self", "batch", "metrics"), own=True, advantage_path=True),
        Hook("v1", "PPOTrainer", "_save_checkpoint", _hook_save_checkpoint("global_steps"), own=True,
             source=_V1_STEP_FOLDER),
        Hook("v1", "PPOTrainer", "_load_checkpoint", _hook_load_checkpoint("global_steps"), own=True, source=_RESUME),
        Hook("v1", "", "compute_advantage_for_multi_trajectories", None, leading=("data", "batch_keys"),
             source=('rsplit("_", 2)',)),
        Hook("v1", "tq", "kv_batch_get", _hook_v1_kv_batch_get, leading=(),
             named=("keys", "partition_id", "select_fields"), advantage_path=True),
    ),
    "verl.experimental.separation.ray_trainer": (
        Hook("separation", "SeparateRayPPOTrainer", "_compute_old_log_prob", _hook_separate_compute_old_log_prob,
             leading=("self", "batch")),  # RayPPOTrainer's, as are the checkpoint methods
        Hook("separation", "SeparateRayPPOTrainer", "_fit_compute_advantage", _hook_separate_fit_compute_advantage,
             leading=("self", "batch"), own=True),
        Hook("separation", "SeparateRayPPOTrainer", "_save_checkpoint", _hook_save_checkpoint("global_steps"),
             source=_V1_STEP_FOLDER),
        Hook("separation", "SeparateRayPPOTrainer", "_load_checkpoint", _hook_load_checkpoint("global_steps"),
             source=_RESUME),
    ),
    "verl.experimental.one_step_off_policy.ray_trainer": (
        Hook("one_step_off", "OneStepOffRayTrainer", "__init__", _hook_start_up(ONE_STEP_OFF),
             leading=("self", "config"), own=True, start_up=True),
    ),
    # FullyAsyncTrainer is a Ray actor class: when verl's module defined it, Ray copied every method into the
    # subclass it runs (``__ray_metadata__.modified_class``, shipped by value to the actor's process, hooks
    # included). Its copy of _fit_compute_advantage already wraps the hooked one unless the module was
    # imported before the plugin.
    "verl.experimental.fully_async_policy.fully_async_trainer": (
        Hook("fully_async", "FullyAsyncTrainer.__ray_metadata__.modified_class", "__init__",
             _hook_start_up(FULLY_ASYNC), leading=("self", "config"), start_up=True),
        Hook("fully_async", "FullyAsyncTrainer.__ray_metadata__.modified_class", "_fit_compute_advantage",
             _hook_separate_fit_compute_advantage, leading=("self", "batch")),
        Hook("fully_async", "FullyAsyncTrainer.__ray_metadata__.modified_class", "_save_checkpoint",
             _hook_save_checkpoint("current_param_version"),
             source=('f"global_step_{self.current_param_version}"', "default_local_dir")),
        Hook("fully_async", "FullyAsyncTrainer.__ray_metadata__.modified_class", "load_checkpoint",
             _hook_fully_async_load_checkpoint, source=_RESUME),
    ),
}


def _resolve(module: ModuleType, hook: Hook) -> tuple[Any, Any]:
    """``(owner, verl's function)`` for ``hook`` in ``module``, probed; raises :class:`.seam.ProbeError`."""
    owner: Any = module
    path = module.__name__
    for part in [part for part in hook.owner.split(".") if part]:
        owner = seam.attribute(owner, part, f"{path}.{part}")
        path = f"{path}.{part}"
    qualname = f"{path}.{hook.name}"
    function = seam.attribute(owner, hook.name, qualname, own=hook.own)
    seam.parameters(function, qualname, hook.leading, hook.named)
    if hook.source:
        seam.source_mentions(function, qualname, hook.source)
    return owner, function


def install(module: ModuleType) -> None:
    """Probe and hook ``module``, one of :data:`SEAMS` (it has just been imported); never raises."""
    resolved: list[tuple[Hook, Any, Any]] = []
    failed: dict[str, seam.ProbeError] = {}
    for hook in SEAMS[module.__name__]:
        try:
            resolved.append((hook, *_resolve(module, hook)))
        except seam.ProbeError as error:
            failed.setdefault(hook.component, error)
    for component, problem in failed.items():
        seam.mark_unavailable(component, problem.attribute, problem.problem)
    upstream = seam.estimators_declare_batch_fields()
    for hook, owner, _ in resolved:
        if hook.make is None or (hook.advantage_path and upstream):
            continue
        if hook.start_up or hook.component not in failed:
            _wrap(owner, hook.name, hook.make)
