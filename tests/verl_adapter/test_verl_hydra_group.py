"""``+algorithm=gtpo`` on verl's own Hydra apps: the config group that the package's search-path plugin
(``hydra_plugins/gtpo_searchpath.py``) puts on Hydra's search path selects GTPO on every entry point, and a run
that does not select it composes byte for byte as without the plugin.

Each case runs the entry point's real ``main`` (its ``@hydra.main``) in this process with ``sys.argv`` set to
``... --cfg job``, as ``python -m <entry point> ... --cfg job`` does, and reads the YAML it prints: about 1 s a
case once verl is imported, against 10-20 s for a process of its own. The experimental trainers' apps are given
their config folder with ``--config-path``, as ``experimental_trainers.py`` composes them: called in-process,
Hydra looks their ``config`` folder up as a Python module, which has no ``__init__.py`` (``python -m`` finds it
as a folder). One-step-off's config also needs ``hydra.searchpath=[pkg://verl.trainer.config]`` from an
installed verl, under ``python -m`` too. "Without the plugin" is the same call with the plugin's only hook,
``manipulate_search_path``, made a no-op on the class Hydra discovered; ``--info searchpath`` shows the folder
there and gone.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import config_tree
import pytest
import yaml

import gtpo_plugin
from gtpo_plugin import GTPOConfig

pytest.importorskip("verl")
from hydra.core.plugins import Plugins  # noqa: E402
from hydra.plugins.search_path_plugin import SearchPathPlugin  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from verl.experimental.fully_async_policy import fully_async_main  # noqa: E402
from verl.experimental.one_step_off_policy import main_ppo as one_step_off_main  # noqa: E402
from verl.trainer import main_ppo  # noqa: E402
from verl.trainer.ppo.utils import need_reference_policy  # noqa: E402
from verl_adapter.experimental_trainers import CONFIGS, EXPERIMENTAL  # noqa: E402

from gtpo_plugin.verl_adapter.settings import check_trainer_config  # noqa: E402

# CI runs it on verl 0.9.0 too (step 2): +algorithm=gtpo composed on this verl's own Hydra configs.
pytestmark = pytest.mark.verl_compat


REPO = Path(__file__).resolve().parents[2]
ENTRY_POINTS: dict[str, tuple[Callable[[], Any], tuple[str, ...]]] = {  # name: (the app, its own arguments)
    "ppo_trainer": (main_ppo.main, ()),
    "ppo_megatron_trainer": (main_ppo.main, ("--config-name", "ppo_megatron_trainer")),
    "one_step_off": (one_step_off_main.main, ("--config-path", f"{EXPERIMENTAL}/{CONFIGS['one_step_off'][0]}",
                                              "hydra.searchpath=[pkg://verl.trainer.config]")),
    "fully_async": (fully_async_main.main, ("--config-path", f"{EXPERIMENTAL}/{CONFIGS['fully_async'][0]}")),
}
# The experimental trainers' configs set bypass_mode=true, which skips the pass GTPO takes its entropy from.
BYPASS_OFF = ("algorithm.rollout_correction.bypass_mode=false",)
ENTRY_SETTINGS = {"ppo_trainer": (), "ppo_megatron_trainer": (), "one_step_off": BYPASS_OFF, "fully_async": BYPASS_OFF}
# What +algorithm=gtpo sets besides algorithm.gtpo (algorithm/gtpo.yaml), and the long form the README gives.
SWITCHES = {
    "algorithm.adv_estimator": "gtpo",
    "actor_rollout_ref.actor.policy_loss.loss_mode": "gtpo",
    "actor_rollout_ref.actor.loss_agg_mode": "seq-mean-token-mean",
    "actor_rollout_ref.actor.use_kl_loss": False,
    "algorithm.use_kl_in_reward": False,
}
LONG_FORM = tuple(f"{key}={str(setting).lower()}" for key, setting in SWITCHES.items())  # the README's lines
GTPO_KEYS = {f"algorithm.gtpo.{name}" for name in GTPOConfig.__dataclass_fields__}
GRPO = ("algorithm.adv_estimator=grpo", "actor_rollout_ref.actor.use_kl_loss=true",
        "actor_rollout_ref.actor.kl_loss_coef=0.001", "actor_rollout_ref.actor.kl_loss_type=low_var_kl")
WARNING = "gtpo-plugin's Hydra config group is not installed completely"


def our_plugin() -> type[SearchPathPlugin]:
    """The plugin class as Hydra discovered it (Hydra's scan executes the module itself)."""
    (plugin,) = [cls for cls in Plugins.instance().discover(SearchPathPlugin)
                 if cls.__module__ == "hydra_plugins.gtpo_searchpath"]
    return plugin


def run_app(app: Callable[[], Any], argv: tuple[str, ...]) -> str:
    """What the Hydra app prints when started with ``argv``; a failed start-up raises."""
    printed = io.StringIO()
    saved = sys.argv
    sys.argv = ["app", *argv]
    try:
        with contextlib.redirect_stdout(printed):
            app()
    except SystemExit as stop:  # Hydra reports a bad config and exits 1
        raise AssertionError(f"{argv} failed: {printed.getvalue()[-2000:]}") from stop
    finally:
        sys.argv = saved
    return printed.getvalue()


@functools.cache
def job(entry: str, *overrides: str, plugin: bool = True) -> str:
    """The entry point's ``--cfg job`` output with ``overrides``, with the plugin or without it."""
    app, own = ENTRY_POINTS[entry]
    argv = (*own, *overrides, "--cfg", "job")
    if plugin:
        return run_app(app, argv)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(our_plugin(), "manipulate_search_path", lambda self, search_path: None)
        return run_app(app, argv)


def tree(printed: str) -> dict[str, Any]:
    config = yaml.safe_load(printed)
    assert isinstance(config, dict)
    return config


def value(config: dict[str, Any], key: str) -> Any:
    return config_tree.flatten(config).get(key, "<absent>")


def test_hydra_discovers_the_plugin_and_searches_the_packages_config_folder():
    folder = Path(gtpo_plugin.__file__).parent / "hydra_config"
    assert sorted(path.name for path in (folder / "algorithm").iterdir()) == ["gtpo.yaml", "gtpo_paper.yaml"]
    with_plugin = run_app(main_ppo.main, ("--info", "searchpath"))
    row = rf"^\| gtpo-plugin +\| file://{re.escape(str(folder))} +\|$"
    assert re.search(row, with_plugin, re.MULTILINE), with_plugin
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(our_plugin(), "manipulate_search_path", lambda self, search_path: None)
        assert "gtpo-plugin" not in run_app(main_ppo.main, ("--info", "searchpath"))


def gtpo_job(entry: str) -> dict[str, Any]:
    """The entry point's config with ``+algorithm=gtpo`` and one knob overridden, as the issue's example."""
    return tree(job(entry, "+algorithm=gtpo", "algorithm.gtpo.entropy_coef=0.05", *ENTRY_SETTINGS[entry]))


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_one_setting_selects_gtpo_on_every_entry_point(entry, caplog):
    base, gtpo = tree(job(entry)), gtpo_job(entry)
    for key, expected in SWITCHES.items():
        assert value(gtpo, key) == expected, key
    assert gtpo["algorithm"]["gtpo"] == {**GTPOConfig().to_dict(), "entropy_coef": 0.05}  # knobs: plain overrides
    # Nothing else changes: the keys that differ from the entry point's own config are the group's.
    changed = config_tree.differing_keys(base, gtpo)
    assert GTPO_KEYS | {"algorithm.adv_estimator", "actor_rollout_ref.actor.policy_loss.loss_mode"} <= changed
    assert changed <= GTPO_KEYS | set(SWITCHES) | {"algorithm.rollout_correction.bypass_mode"}
    # No KL anywhere: verl loads no reference model, and the adapter's start-up check has nothing to say.
    config = OmegaConf.create(gtpo)
    assert need_reference_policy(config) is False
    with caplog.at_level(logging.WARNING, logger="gtpo_plugin"):
        check_trainer_config(config)
    assert [record.getMessage() for record in caplog.records if record.name.startswith("gtpo_plugin")] == []


def test_the_long_form_for_users_without_hydra_groups_gives_the_same_config():
    # The README's long form: the five switches and the one knob; the adapter fills in the others at start-up.
    long_form = OmegaConf.create(tree(job("ppo_trainer", *LONG_FORM, "+algorithm.gtpo.entropy_coef=0.05")))
    group = OmegaConf.create(gtpo_job("ppo_trainer"))
    assert config_tree.differing_keys(OmegaConf.to_container(long_form), gtpo_job("ppo_trainer")) == (
        GTPO_KEYS - {"algorithm.gtpo.entropy_coef"})
    check_trainer_config(long_form)
    check_trainer_config(group)
    assert OmegaConf.to_yaml(long_form) == OmegaConf.to_yaml(group)


def test_the_paper_option_carries_the_authors_values():
    paper = tree(job("ppo_trainer", "+algorithm=gtpo_paper"))
    assert paper["algorithm"]["gtpo"] == GTPOConfig().to_dict()  # entropy_coef 0.1, the authors' (and the core's)
    # gtpo's entropy_coef, 0.02 (the recipes' for verl's usual reward), is checked through the recipes' verl preset
    assert config_tree.differing_keys(paper, gtpo_job("ppo_trainer")) == {"algorithm.gtpo.entropy_coef"}


@pytest.mark.parametrize(("entry", "overrides"), [
    *((entry, ()) for entry in ENTRY_POINTS),
    ("ppo_trainer", GRPO),
], ids=[*ENTRY_POINTS, "ppo_trainer-grpo"])
def test_a_run_that_does_not_select_it_composes_byte_for_byte_as_without_the_plugin(entry, overrides):
    with_plugin = job(entry, *overrides)
    assert with_plugin == job(entry, *overrides, plugin=False)
    assert "gtpo" not in with_plugin


def test_the_recipes_grpo_twin_composes_byte_for_byte_as_without_the_plugin():
    recipe = ("--config-path", str(REPO / "recipes" / "config"), "--config-name", "grpo")
    assert job("ppo_trainer", *recipe) == job("ppo_trainer", *recipe, plugin=False)


def test_without_the_plugin_the_group_is_not_there():
    # what makes the comparisons above meaningful: the no-op really takes the group away
    with pytest.raises(AssertionError, match="failed"):
        job("ppo_trainer", "+algorithm=gtpo", plugin=False)


def test_a_half_installed_copy_leaves_verls_start_up_as_without_it_and_warns_once(tmp_path, caplog):
    # A copy of the plugin module whose package is not next to it, loaded under a name of its own.
    copy = tmp_path / "site" / "hydra_plugins" / "gtpo_searchpath.py"
    copy.parent.mkdir(parents=True)
    copy.write_bytes((REPO / "hydra_plugins" / "gtpo_searchpath.py").read_bytes())
    spec = importlib.util.spec_from_file_location("gtpo_searchpath_half_installed", copy)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.MonkeyPatch.context() as patch, caplog.at_level(logging.WARNING):
        patch.setattr(our_plugin(), "manipulate_search_path", module.GTPOSearchPathPlugin.manipulate_search_path)
        first, second = (run_app(main_ppo.main, ("--cfg", "job")) for _ in range(2))
    assert first == second == job("ppo_trainer", plugin=False)
    warnings = [record for record in caplog.records if WARNING in record.getMessage()]
    assert len(warnings) == 1 and str(copy.parents[1] / "gtpo_plugin") in warnings[0].getMessage()

