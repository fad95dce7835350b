"""scripts/download_wheels.py without the network: the pip commands it would run, the target's tags, the split.

A real download is hundreds of MB; here the commands are checked (``--list``), the requirement is checked
against verl's own metadata (it is what pins vLLM 0.24.0), and the folder split runs on files made here.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "download_wheels.py"
_spec = importlib.util.spec_from_file_location("download_wheels", SCRIPT)
assert _spec is not None and _spec.loader is not None
download_wheels = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = download_wheels
_spec.loader.exec_module(download_wheels)


def listed(*args: str) -> list[list[str]]:
    result = subprocess.run([sys.executable, str(SCRIPT), "--list", *args], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


def values(command: list[str], option: str) -> list[str]:
    return [command[i + 1] for i, word in enumerate(command) if word == option]


def test_list_prints_three_pip_commands_for_the_target(tmp_path):
    build, source_only, download = listed("--dest", str(tmp_path / "w"))
    dest = str((tmp_path / "w").resolve())
    assert build[1:] == ["-m", "pip", "wheel", "--no-deps", "--wheel-dir", dest, str(SCRIPT.parents[1])]
    assert source_only[1:] == ["-m", "pip", "wheel", "--no-deps", "--wheel-dir", dest, "antlr4-python3-runtime==4.9.3"]
    assert download[1:4] == ["-m", "pip", "download"] and "--only-binary=:all:" in download
    assert values(download, "--python-version") == ["3.12"] and values(download, "--implementation") == ["cp"]
    assert values(download, "--abi") == ["cp312", "abi3", "none"]
    platforms = values(download, "--platform")
    assert platforms[0] == "manylinux_2_35_x86_64" and "manylinux_2_28_x86_64" in platforms
    assert platforms[-4:] == ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux2010_x86_64",
                              "manylinux1_x86_64"]
    assert values(download, "--find-links") == [dest] and values(download, "--dest") == [dest]
    version = download_wheels.package_version()
    assert download[-4:] == [f"gtpo-plugin[verl,eval]=={version}", "verl[vllm]==0.9.1", "hydra-core>=1.3,<1.4",
                             "omegaconf>=2.3,<2.4"]


def test_options_follow_the_arguments(tmp_path):
    *_, download = listed("--dest", str(tmp_path), "--python-version", "3.11", "--glibc", "2.28", "--arch", "aarch64",
                          "--no-build-isolation")
    assert values(download, "--abi")[0] == "cp311" and values(download, "--python-version") == ["3.11"]
    assert values(download, "--platform")[0] == "manylinux_2_28_aarch64"
    assert "--no-build-isolation" in listed("--dest", str(tmp_path), "--no-build-isolation")[0]
    *_, resolve = listed("--dest", str(tmp_path), "--resolve-only")
    assert resolve[3:7] == ["install", "--dry-run", "--ignore-installed", "--quiet"]
    assert values(resolve, "--report") == [str(tmp_path.resolve() / "resolution.json")]


def test_verl_vllm_extra_pins_vllm_0_24_0():
    # The one requirement verl[vllm]==0.9.1 brings vLLM 0.24.0 (and its torch and transformers) with it.
    # Read from the installed verl's metadata, so it runs where verl 0.9.1 is installed (CI's first step);
    # the verl 0.9.0 environment of CI's second step cannot tell what 0.9.1 pins.
    if importlib.metadata.version("verl") != "0.9.1":
        pytest.skip("the script fetches verl 0.9.1; this environment has verl "
                    f"{importlib.metadata.version('verl')}, whose metadata says nothing about 0.9.1's pins")
    requires = importlib.metadata.requires("verl") or []
    assert 'vllm==0.24.0; extra == "vllm"' in requires
    assert 'torch==2.11.0; extra == "vllm"' in requires


@pytest.mark.parametrize(("glibc", "python"), [("2.16", "3.12"), ("3.1", "3.12"), ("2.35", "312")])
def test_bad_target_is_refused(glibc, python):
    result = subprocess.run([sys.executable, str(SCRIPT), "--list", "--glibc", glibc, "--python-version", python],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and result.stderr.startswith("download_wheels: --")


def test_split_into_folders_first_fit_decreasing(tmp_path):
    mib = 1024 * 1024
    sizes = {"a.whl": 50, "b.whl": 30, "c.whl": 25, "d.whl": 8, "huge.whl": 70}
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(b"\0" * (size * mib))
    (tmp_path / "resolution.json").write_text("{}")  # not a wheel: stays
    folders = download_wheels.split_into_folders(tmp_path, 60)
    contents = {folder.name: sorted(path.name for path in folder.iterdir()) for folder in folders}
    # Largest first: huge alone (over the limit), a + d = 58, b + c = 55.
    assert contents == {"part-01": ["huge.whl"], "part-02": ["a.whl", "d.whl"], "part-03": ["b.whl", "c.whl"]}
    assert sorted(path.name for path in tmp_path.glob("*.whl")) == []
    assert (tmp_path / "resolution.json").exists()
    with pytest.raises(ValueError, match="--split-mib must be a positive size"):
        download_wheels.split_into_folders(tmp_path, 0)


def test_install_command_names_every_folder(tmp_path):
    command = download_wheels.install_command([tmp_path / "part-01", tmp_path / "part-02"])
    assert command == (f'pip install --no-index --find-links {tmp_path / "part-01"} --find-links '
                       f'{tmp_path / "part-02"} "gtpo-plugin[verl,eval]" "verl[vllm]==0.9.1"')


def test_this_packages_wheel_builds_offline(tmp_path):
    # The first command for real, with the installed setuptools (no build isolation: nothing is downloaded),
    # on a copy of the package so that setuptools' build/ and egg-info stay out of the repository.
    repo = SCRIPT.parents[1]
    source = tmp_path / "source"
    shutil.copytree(repo / "gtpo_plugin", source / "gtpo_plugin", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, source / name)
    build = listed("--dest", str(tmp_path / "wheels"), "--no-build-isolation")[0]
    assert build[-1] == str(repo)
    build[-1] = str(source)
    result = subprocess.run([*build, "--no-index", "--quiet"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    wheels = [path.name for path in (tmp_path / "wheels").glob("*.whl")]
    assert wheels == [f"gtpo_plugin-{download_wheels.package_version()}-py3-none-any.whl"]
