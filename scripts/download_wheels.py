"""Download every wheel a GPU machine without internet needs to run the recipes and the smoke run.

Run it on any machine with internet (the target's Python version and platform are arguments, so a laptop
will do), copy the folder over, and install there with no index::

    python scripts/download_wheels.py --dest wheels/                       # Python 3.12, x86_64, glibc >= 2.35
    python scripts/download_wheels.py --dest wheels/ --split-mib 60        # then move them into <= 60 MiB folders
    python scripts/download_wheels.py --list                               # print the pip commands, run nothing
    python scripts/download_wheels.py --resolve-only                       # resolve and list the wheels, keep none
    # on the GPU machine:
    pip install --no-index --find-links wheels/ "gtpo-plugin[verl,eval]" "verl[vllm]==0.9.1"

What it fetches: ``verl[vllm]==0.9.1`` (verl's own pins: vLLM 0.24.0, torch 2.11.0, transformers 5.9.0, with
Ray, hydra-core, omegaconf, TransferQueue, tensordict, codetiming and the rest of verl's dependencies) and
this package with its ``verl`` and ``eval`` extras, resolved together by pip for the target, binary wheels
only. Two wheels are built here rather than downloaded: this package, and the pure-Python packages that
PyPI has only as source (``SOURCE_ONLY``; without them pip would fall back to an ancient hydra-core).
Not included: flash-attn and Transformer Engine's PyTorch part (the ``gpu`` extra), of which PyPI has no
binary wheel for this target; verl's FSDP engine uses flash-attn on GPUs, so bring a flash-attn wheel built
for torch 2.11 and the target's CUDA into the same folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger("download_wheels")

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = ("verl[vllm]==0.9.1", "hydra-core>=1.3,<1.4", "omegaconf>=2.3,<2.4")
PACKAGE_EXTRAS = "verl,eval"
# Pure-Python dependencies that PyPI has only as source: built into wheels here (valid on any platform).
SOURCE_ONLY = ("antlr4-python3-runtime==4.9.3",)
OLDEST_GLIBC_MINOR = 17  # manylinux2014 = glibc 2.17


def package_version() -> str:
    """This package's version, from pyproject.toml."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'^version\s*=\s*"([^"]+)"', text, flags=re.MULTILINE)
    if match is None:
        raise ValueError(f"{REPO / 'pyproject.toml'}: no version = \"...\" line")
    return match.group(1)


def platform_tags(glibc: str, arch: str) -> list[str]:
    """Every manylinux tag a machine with this glibc accepts, newest first (pip does not expand them itself)."""
    match = re.fullmatch(r"2\.(\d+)", glibc)
    if match is None or int(match.group(1)) < OLDEST_GLIBC_MINOR:
        raise ValueError(f"--glibc must look like 2.35 and be at least 2.{OLDEST_GLIBC_MINOR}, got {glibc!r}")
    newest = int(match.group(1))
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(newest, OLDEST_GLIBC_MINOR - 1, -1)]
    return [*tags, f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]


def target_options(python_version: str, glibc: str, arch: str) -> list[str]:
    """pip's options that select the target's wheels: CPython ``python_version``, its ABI, abi3 and pure ones."""
    if re.fullmatch(r"3\.\d+", python_version) is None:
        raise ValueError(f"--python-version must look like 3.12, got {python_version!r}")
    cp = "cp" + python_version.replace(".", "")
    options = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
               "--abi", cp, "--abi", "abi3", "--abi", "none"]
    for tag in platform_tags(glibc, arch):
        options += ["--platform", tag]
    return options


def requirements() -> list[str]:
    return [f"gtpo-plugin[{PACKAGE_EXTRAS}]=={package_version()}", *REQUIREMENTS]


def pip_commands(dest: Path, python_version: str, glibc: str, arch: str, *, resolve_only: bool,
                 report: Path | None = None, build_isolation: bool = True) -> list[list[str]]:
    """The pip calls, in order: build this package's wheel, build the source-only ones, then fetch the rest."""
    pip = [sys.executable, "-m", "pip"]
    isolation = [] if build_isolation else ["--no-build-isolation"]
    commands = [
        [*pip, "wheel", "--no-deps", *isolation, "--wheel-dir", str(dest), str(REPO)],
        [*pip, "wheel", "--no-deps", "--wheel-dir", str(dest), *SOURCE_ONLY],
    ]
    target = target_options(python_version, glibc, arch)
    if resolve_only:
        # A dry-run install for the target: pip resolves as for the download and keeps no wheel (it may still
        # fetch a wheel to read its metadata when the index does not serve the metadata alone).
        scratch = Path(tempfile.gettempdir()) / "download_wheels_target"
        commands.append([*pip, "install", "--dry-run", "--ignore-installed", "--quiet", "--target", str(scratch),
                         "--report", str(report or dest / "resolution.json"), *target, "--find-links", str(dest),
                         *requirements()])
    else:
        commands.append([*pip, "download", *target, "--find-links", str(dest), "--dest", str(dest), *requirements()])
    return commands


def split_into_folders(dest: Path, limit_mib: float) -> list[Path]:
    """Move ``dest``'s wheels into ``dest/part-01``, ``part-02``, ... of at most ``limit_mib`` MiB each.

    Wheels are taken largest first, each into the first folder it fits (first-fit decreasing); a wheel
    larger than the limit gets a folder of its own. Returns the folders. O(W·F) for W wheels, F folders.
    """
    if limit_mib <= 0:
        raise ValueError(f"--split-mib must be a positive size in MiB, got {limit_mib}")
    limit = limit_mib * 1024 * 1024
    wheels = sorted(dest.glob("*.whl"), key=lambda path: (-path.stat().st_size, path.name))
    folders: list[tuple[Path, list[int]]] = []
    for wheel in wheels:
        size = wheel.stat().st_size
        home = next((folder for folder, used in folders if used[0] + size <= limit), None)
        if home is None:
            home = dest / f"part-{len(folders) + 1:02d}"
            home.mkdir()
            folders.append((home, [0]))
        for folder, used in folders:
            if folder == home:
                used[0] += size
        shutil.move(str(wheel), home / wheel.name)
        if size > limit:
            logger.warning("%s is %.0f MiB, more than --split-mib %s: it has a folder of its own",
                           wheel.name, size / 2**20, limit_mib)
    return [folder for folder, _ in folders]


def install_command(folders: Sequence[Path]) -> str:
    links = " ".join(f"--find-links {shlex.quote(str(folder))}" for folder in folders)
    return f'pip install --no-index {links} "gtpo-plugin[{PACKAGE_EXTRAS}]" "verl[vllm]==0.9.1"'


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=Path("wheels"), help="folder for the wheels (default wheels/)")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (default 3.12)")
    parser.add_argument("--glibc", default="2.35", help="the GPU machine's glibc, `ldd --version` (default 2.35; "
                        "vLLM 0.24's dependencies need at least 2.31)")
    parser.add_argument("--arch", default="x86_64", help="the GPU machine's architecture (default x86_64)")
    parser.add_argument("--split-mib", type=float, help="afterwards, move the wheels into folders of at most this size")
    parser.add_argument("--no-build-isolation", action="store_true",
                        help="build this package's wheel with the setuptools already installed (no download)")
    parser.add_argument("--list", action="store_true", help="print the pip commands and exit")
    parser.add_argument("--resolve-only", action="store_true",
                      help="resolve for the target and list the wheels, keeping none (pip may still fetch some "
                      "to read their metadata)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dest = args.dest.expanduser().resolve()
    report = dest / "resolution.json"
    try:
        commands = pip_commands(dest, args.python_version, args.glibc, args.arch, resolve_only=args.resolve_only,
                                report=report, build_isolation=not args.no_build_isolation)
    except ValueError as error:
        print(f"download_wheels: {error}", file=sys.stderr)
        return 2
    if args.list:
        for command in commands:
            print(shlex.join(command))
        return 0
    dest.mkdir(parents=True, exist_ok=True)
    for command in commands:
        logger.info("+ %s", shlex.join(command))
        subprocess.run(command, check=True)
    if args.resolve_only:
        wheels = [item["download_info"]["url"].rsplit("/", 1)[-1]
                  for item in json.loads(report.read_text(encoding="utf-8"))["install"]]
        print("\n".join(sorted(wheels)))
        print(f"{len(wheels)} wheels for Python {args.python_version}, glibc {args.glibc}, {args.arch}; "
              f"resolution in {report}")
        return 0
    folders = split_into_folders(dest, args.split_mib) if args.split_mib else [dest]
    print(f"{sum(1 for folder in folders for _ in folder.glob('*.whl'))} wheels in {dest}; on the GPU machine:")
    print(install_command(folders))
    return 0


if __name__ == "__main__":
    sys.exit(main())
