"""The package's Hydra search-path plugin (``hydra_plugins/gtpo_searchpath.py``) in a Hydra app that is not verl's.

The app, written here, has an ``algorithm`` group of its own (``sgd``, ``adam``), the name GTPO's group uses. It
runs in a process of its own (Hydra scans its plugins once per process; about 1 s, no verl) in five installs:

- as installed here: Hydra searches the package's config folder, and the app's config is unchanged;
- without the plugin: the plugin module is shadowed by an empty one of the same name, first on ``PYTHONPATH``;
- half-installed, twice: a copy of the plugin module without the package next to it, and with a package that
  lacks its config folder. The app starts and composes as without the plugin, and one warning says why;
- broken: the package's ``algorithm/gtpo.yaml`` is not YAML. Hydra reads a group's files only when a run selects
  them, so the app, which does not, starts and composes as without the plugin.

Each process starts the app four times (two ``--cfg job``, ``--info searchpath``, ``--cfg hydra``): the warning
comes once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("hydra")

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "hydra_plugins" / "gtpo_searchpath.py"
WARNING = "gtpo-plugin's Hydra config group is not installed completely"
APP = '''
import sys
import hydra
from omegaconf import OmegaConf


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg):
    print(OmegaConf.to_yaml(cfg))


for argv in (["--cfg", "job"], ["--cfg", "job", "algorithm=adam", "lr=0.5"], ["--info", "searchpath"],
             ["--cfg", "hydra"]):
    sys.argv = ["app.py", *argv]
    main()
'''
CONFIGS = {
    "config.yaml": "defaults:\n  - algorithm: sgd\n  - _self_\nname: not verl\nlr: 0.1\n",
    "algorithm/sgd.yaml": "name: sgd\nmomentum: 0.9\n",
    "algorithm/adam.yaml": "name: adam\nbetas: [0.9, 0.999]\n",
}


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("app")
    (folder / "app.py").write_text(APP, encoding="utf-8")
    for name, body in CONFIGS.items():
        (folder / "conf" / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / "conf" / name).write_text(body, encoding="utf-8")
    return folder


def site(root: Path, plugin: str | None, package: bool = False, group_file: str | None = None) -> Path:
    """A folder to put first on ``PYTHONPATH``: ``hydra_plugins/gtpo_searchpath.py`` holding ``plugin``; with
    ``package``, a ``gtpo_plugin`` package whose config folder holds ``algorithm/gtpo.yaml`` only if ``group_file``
    is given (its text)."""
    (root / "hydra_plugins").mkdir(parents=True)
    (root / "hydra_plugins" / "gtpo_searchpath.py").write_text(plugin or "", encoding="utf-8")
    if package:
        (root / "gtpo_plugin").mkdir()
        (root / "gtpo_plugin" / "__init__.py").write_text("", encoding="utf-8")
    if group_file is not None:
        (root / "gtpo_plugin" / "hydra_config" / "algorithm").mkdir(parents=True)
        (root / "gtpo_plugin" / "hydra_config" / "algorithm" / "gtpo.yaml").write_text(group_file, encoding="utf-8")
    return root


def run(app: Path, first_on_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if first_on_path is not None:
        env["PYTHONPATH"] = str(first_on_path)
    return subprocess.run([sys.executable, "app.py"], cwd=app, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def runs(app, tmp_path_factory) -> dict[str, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("installs")
    copy = PLUGIN.read_text(encoding="utf-8")
    installs = {
        "installed": None,
        "without": site(root / "without", None),
        "no package": site(root / "no_package", copy),
        "no config folder": site(root / "no_config", copy, package=True),
        "broken group file": site(root / "broken", copy, package=True, group_file="algorithm: [a\n  : :\n"),
    }
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # mostly single-threaded start-up
        futures = {name: pool.submit(run, app, folder) for name, folder in installs.items()}
        return {name: future.result() for name, future in futures.items()}


def jobs(result: subprocess.CompletedProcess[str]) -> str:
    """The two ``--cfg job`` outputs: what the app printed before its search path."""
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split("Config search path", 1)[0]


def test_installed_the_app_searches_the_packages_folder_and_composes_as_without_it(runs):
    installed, without = runs["installed"], runs["without"]
    assert f"file://{REPO / 'gtpo_plugin' / 'hydra_config'}" in installed.stdout
    assert "gtpo-plugin" not in without.stdout
    assert "provider: gtpo-plugin" in installed.stdout  # Hydra's record, hydra.runtime.config_sources
    assert jobs(installed) == jobs(without)
    assert "name: adam" in jobs(installed) and "lr: 0.5" in jobs(installed)  # the app's own group still selects
    assert WARNING not in installed.stderr + without.stderr


@pytest.mark.parametrize("install", ["no package", "no config folder"])
def test_a_half_installed_copy_never_breaks_start_up_and_warns_once(runs, install):
    result = runs[install]
    assert jobs(result) == jobs(runs["without"])
    assert "gtpo-plugin" not in result.stdout
    assert result.stderr.count(WARNING) == 1, result.stderr


def test_a_broken_group_file_leaves_a_run_that_does_not_select_it_as_without_the_plugin(runs):
    result = runs["broken group file"]
    assert jobs(result) == jobs(runs["without"])
    assert "provider: gtpo-plugin" in result.stdout and WARNING not in result.stderr
