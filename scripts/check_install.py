"""Install gtpo-plugin as a user does, from a built wheel into a fresh environment, and check it works.

An editable install reads the package from the repository, so it hides packaging mistakes (a module
or data file left out of the wheel, a missing entry point). This script:

1. builds the sdist and, from it, the wheel (``python -m build``), as a release would;
2. checks the wheel's contents: every file of ``gtpo_plugin/`` in the repository is in it (its Hydra config
   group ``gtpo_plugin/hydra_config`` included), and the Hydra search-path plugin
   ``hydra_plugins/gtpo_searchpath.py`` without a ``hydra_plugins/__init__.py`` (the namespace package is
   shared with other Hydra plugins); nothing else is needed at run time (the recipes are shell scripts and
   Hydra configs used from a clone); and its entry points (``verl.plugins``: ``gtpo``; ``gtpo-demo``, ``gtpo-eval``);
3. creates a fresh virtual environment and installs ``torch==TORCH_VERSION`` (CPU build) then
   ``"<wheel>[verl]"``, not editable;
4. from a folder outside the repository, with no ``PYTHONPATH``: checks that the package comes from
   the environment, that ``import verl`` registers GTPO (``get_adv_estimator_fn('gtpo')``,
   ``get_policy_loss_fn('gtpo')``), that Hydra finds the installed config group: verl's ``main_ppo`` with
   ``--config-name ppo_trainer`` and ``ppo_megatron_trainer``, ``+algorithm=gtpo
   algorithm.gtpo.entropy_coef=0.05 --cfg job`` prints GTPO's estimator and loss, no KL term and the knob
   (run in the same process, as ``python -m verl.trainer.main_ppo`` runs it), and runs a 2-step demo
   (``gtpo-demo`` with :data:`DEMO_ARGS`).

Usage: ``python scripts/check_install.py [--work-dir DIR] [--torch-version 2.13.0]``
(needs ``build``, part of the ``test`` extra, and PyPI). Exits non-zero on the first failure.
"""

from __future__ import annotations

import argparse
import configparser
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

logger = logging.getLogger("check_install")

REPO = Path(__file__).resolve().parents[1]
DEMO_ARGS = ("--steps", "2", "--warmup-steps", "2", "--prompts", "2", "--group-size", "2", "--no-progress")
ENTRY_POINTS = {
    "verl.plugins": {"gtpo": "gtpo_plugin.verl_adapter"},
    "console_scripts": {"gtpo-demo": "gtpo_plugin.demo:main", "gtpo-eval": "gtpo_plugin.evaluation.cli:main"},
}
# Hydra's plugin module; the wheel must not hold hydra_plugins/__init__.py, which would hide every other plugin.
HYDRA_PLUGIN = "hydra_plugins/gtpo_searchpath.py"
CHECK_REGISTRATION = """
import sys
from pathlib import Path
import gtpo_plugin
assert Path(sys.prefix) in Path(gtpo_plugin.__file__).resolve().parents, gtpo_plugin.__file__
import verl
from verl.trainer.ppo.core_algos import get_adv_estimator_fn, get_policy_loss_fn
print("verl", verl.__version__, "gtpo:", get_adv_estimator_fn("gtpo").__name__, get_policy_loss_fn("gtpo").__name__)
"""
# verl's own Hydra app with the installed config group, as `python -m verl.trainer.main_ppo ... --cfg job` runs it.
CHECK_CONFIG_GROUP = """
import contextlib
import io
import yaml
from verl.trainer import main_ppo


def main_ppo_prints(*argv):
    sys.argv = ["main_ppo", *argv]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main_ppo.main()
    return printed.getvalue()


folder = Path(gtpo_plugin.__file__).parent / "hydra_config"
assert f"file://{folder}" in main_ppo_prints("--info", "searchpath"), "Hydra does not search " + str(folder)
for name in ("ppo_trainer", "ppo_megatron_trainer"):
    config = yaml.safe_load(main_ppo_prints("--config-name", name, "+algorithm=gtpo",
                                            "algorithm.gtpo.entropy_coef=0.05", "--cfg", "job"))
    algorithm, actor = config["algorithm"], config["actor_rollout_ref"]["actor"]
    assert (algorithm["adv_estimator"], actor["policy_loss"]["loss_mode"]) == ("gtpo", "gtpo"), name
    assert actor["loss_agg_mode"] == "seq-mean-token-mean", name
    assert (algorithm["use_kl_in_reward"], actor["use_kl_loss"]) == (False, False), name
    assert algorithm["gtpo"]["entropy_coef"] == 0.05, name
    print(name, "+algorithm=gtpo: adv_estimator=gtpo, loss_mode=gtpo, no KL, gtpo:", algorithm["gtpo"])
"""


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    logger.info("$ %s", " ".join(command))
    return subprocess.run(command, check=True, **kwargs)


def package_files() -> set[str]:
    """The files of gtpo_plugin/ in the repository (as wheel paths), without caches."""
    return {path.relative_to(REPO).as_posix() for path in (REPO / "gtpo_plugin").rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.suffix not in {".pyc", ".pyo"}}


def check_wheel_contents(wheel: Path) -> None:
    """Raise AssertionError if the wheel lacks a package file, holds something else, or lacks an entry point."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points_file = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
        parser = configparser.ConfigParser()
        parser.read_string(archive.read(entry_points_file).decode())
    missing = package_files() - names
    assert not missing, f"the wheel lacks files of gtpo_plugin/: {sorted(missing)}"
    assert HYDRA_PLUGIN in names, f"the wheel lacks {HYDRA_PLUGIN}"
    extra = {name for name in names if not name.startswith(("gtpo_plugin/", "gtpo_plugin-"))} - {HYDRA_PLUGIN}
    assert not extra, f"the wheel holds files outside gtpo_plugin/ and {HYDRA_PLUGIN}: {sorted(extra)}"
    for group, entries in ENTRY_POINTS.items():
        found = dict(parser[group]) if parser.has_section(group) else {}
        for name, target in entries.items():
            assert found.get(name, "").replace(" ", "") == target, f"entry point {group}:{name} is {found.get(name)}"
    logger.info("wheel %s: %d files, all of gtpo_plugin/, entry points %s", wheel.name, len(names),
                ", ".join(f"{g}:{n}" for g, e in ENTRY_POINTS.items() for n in e))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a new temporary folder")
    parser.add_argument("--torch-version", default=os.environ.get("TORCH_VERSION", "2.13.0"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="gtpo-install-"))).resolve()
    assert REPO not in work.parents and work != REPO, "the work folder must be outside the repository"
    work.mkdir(parents=True, exist_ok=True)

    dist = work / "dist"
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)], stdout=subprocess.DEVNULL)
    (wheel,) = dist.glob("gtpo_plugin-*.whl")
    check_wheel_contents(wheel)

    venv = work / "venv"
    run([sys.executable, "-m", "venv", "--clear", str(venv)])
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--quiet"]
    run([*pip, "--upgrade", "pip"])
    run([*pip, f"torch=={args.torch_version}"])
    run([*pip, f"{wheel}[verl]", f"torch=={args.torch_version}"])

    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "VIRTUAL_ENV", "VERL_USE_EXTERNAL_PLUGINS", "VERL_USE_EXTERNAL_MODULES"}}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    outside = work / "run"
    outside.mkdir(exist_ok=True)
    result = run([python, "-c", CHECK_REGISTRATION + CHECK_CONFIG_GROUP], cwd=outside, env=env, capture_output=True,
                 text=True)
    logger.info("%s", result.stdout.strip())
    demo_out = outside / "demo"
    run([str(venv / "bin" / "gtpo-demo"), *DEMO_ARGS, "--out", str(demo_out)], cwd=outside, env=env)
    written = sorted(path.name for path in demo_out.iterdir())
    assert "metrics.json" in written and "summary.txt" in written, f"the demo wrote {written}"
    logger.info("installed from the wheel: GTPO registered in verl, 2-step demo wrote %s", ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
