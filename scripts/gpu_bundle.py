"""The bundle the one-call GPU check carries: built here, installed on the lent GPU machine (no network there).

    python scripts/gpu_bundle.py build --out build/gpu_bundle     # here: resolve, download, check, pack
    python scripts/gpu_bundle.py install build/gpu_bundle         # there: unpack, check the machine's versions

What the machine lacks (``../shared/gpu/README.md``; its image holds ``MACHINE_HAS``): verl 0.9.1 with its
dependencies, TransferQueue and the servers' libraries verl imports (``REQUIREMENTS``), the transformers and
tokenizers pair verl accepts (the machine's 5.17 is above verl's ``<5.11``), for CPython 3.12 on x86_64
Linux; and the smoke run's tiny model, data and resolved configs (``recipes/run_smoke_1gpu.sh`` with
``DRY_RUN=1``, built here at ``SMOKE_DIR``, the same path there). pip resolves for that target; every
distribution the machine does not hold is carried, unpacked, without Ray's Java jars (``LEFT_OUT``) and
without the top-level ``tests``/``scripts`` folders verl's and TransferQueue's wheels install. The
completeness check reads the carried wheels' own metadata, verl's first: every requirement that applies
to the target is met by exactly one carried version or is the machine's (``install`` checks the machine's
versions against the same requirements before anything runs).

The bundle is pieces ``piece-NN.tar.xz`` (Python's ``tarfile`` reads them; no xz binary needed there), each
under ``--piece-mib`` (63) and under 64 MiB less the working tree, so that one device call carries the
working tree and one piece. Wheels and the
resolution are cached under ``${GTPO_CI_CACHE:-/tmp/gtpo-ci-cache}``.
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("gpu_bundle")

REPO = Path(__file__).resolve().parents[1]
PYTHON_VERSION = "3.12"
REQUIREMENTS = ("verl==0.9.1", "TransferQueue==0.1.11", "transformers==5.9.0", "tokenizers==0.22.2",
                "fastapi", "uvicorn", "cachetools")
# The machine's own Python packages (its image 'cuda', read 2026-11-17; /work/shared/gpu and KINDS.md), by
# canonical name. transformers and tokenizers are there too, at versions verl does not accept: carried.
MACHINE_HAS = frozenset({
    "absl-py", "accelerate", "aiofiles", "aiohappyeyeballs", "aiohttp", "aiosignal", "annotated-doc", "anyio",
    "attrs", "botorch", "build", "certifi", "charset-normalizer", "chex", "click", "cloudpickle", "cmake",
    "colorama", "contourpy", "coverage", "cuda-bindings", "cuda-core", "cuda-pathfinder", "cuda-toolkit",
    "cupy-cuda13x", "cycler", "cython", "diffrax", "e3nn", "einops", "equinox", "etils", "execnet", "filelock",
    "flatbuffers", "flax", "fonttools", "formulaic", "frozenlist", "fsspec", "gpytorch", "grpcio", "h11", "h5py",
    "hf-xet", "httpcore", "httpx", "huggingface-hub", "humanize", "hypothesis", "idna", "imageio", "iniconfig",
    "interface-meta", "jax", "jax-cuda13-pjrt", "jax-cuda13-plugin", "jaxlib", "jaxtyping", "jinja2", "joblib",
    "kiwisolver", "lazy-loader", "lightning", "lightning-utilities", "linear-operator", "lineax", "llvmlite", "lxml",
    "markdown", "markdown-it-py", "markupsafe", "matplotlib", "mdurl", "meson", "ml-dtypes", "mpi4py", "mpmath",
    "msgpack", "multidict", "multipledispatch", "mypy-extensions", "nanobind", "narwhals", "networkx", "ninja",
    "numba", "numba-cuda", "numpy", "numpyro", "nvidia-cublas", "nvidia-cuda-cupti", "nvidia-cuda-nvrtc",
    "nvidia-cuda-runtime", "nvidia-cudnn-cu13", "nvidia-cufft", "nvidia-cufile", "nvidia-curand", "nvidia-cusolver",
    "nvidia-cusparse", "nvidia-cusparselt-cu13", "nvidia-ml-py", "nvidia-nccl-cu13", "nvidia-nvjitlink",
    "nvidia-nvshmem-cu13", "nvidia-nvtx", "onnx", "onnx-ir", "onnxruntime", "onnxscript", "opencv-python-headless",
    "opt-einsum", "opt-einsum-fx", "optax", "optimistix", "orbax-checkpoint", "packaging", "pandas", "pathspec",
    "patsy", "peft", "pillow", "pip", "pluggy", "portalocker", "prometheus-client", "propcache", "protobuf",
    "psutil", "py-cpuinfo", "pyarrow", "pybind11", "pygments", "pyparsing", "pyproject-hooks", "pyre-extensions",
    "pytest", "pytest-benchmark", "pytest-cov", "pytest-mock", "pytest-timeout", "pytest-xdist", "python-dateutil",
    "pytorch-lightning", "pyyaml", "regex", "requests", "rich", "sacrebleu", "safetensors", "scikit-build-core",
    "scikit-image", "scikit-learn", "scipy", "seaborn", "sentence-transformers", "sentencepiece", "setuptools",
    "shellingham", "simplejson", "six", "sortedcontainers", "statsmodels", "sympy", "tabulate", "tensorboard",
    "tensorboard-data-server", "tensorstore", "threadpoolctl", "tifffile", "tiktoken", "timm", "tokenizers", "toolz",
    "torch", "torch-geometric", "torchaudio", "torchdiffeq", "torchmetrics", "torchvision", "tqdm", "transformers",
    "treescope", "triton", "typer", "typing-extensions", "typing-inspect", "urllib3", "uvloop", "wadler-lindig",
    "werkzeug", "wheel", "wrapt", "xarray", "xxhash", "yarl", "zipp",
})
CARRIED_ALTHOUGH_THERE = frozenset({"transformers", "tokenizers"})
# Pure-Python packages PyPI has only as source: built into wheels here.
SOURCE_ONLY = ("antlr4-python3-runtime==4.9.3",)
LEFT_OUT = ("ray/jars/",)  # Java workers (32 MB), unused by Python-only Ray
STRAY_TOP_LEVEL = ("tests/", "scripts/")  # verl's and TransferQueue's wheels install their own as packages
SMOKE_DIR = Path("/tmp/gtpo-gpu-check/smoke_run")
CALL_LIMIT_MIB = 64  # what one device call carries: the working tree plus the carried paths
# xz level of each part. Measured on the four largest wheels (ray, wandb, transformers, virtualenv), 2 cores:
# level 1 takes 51 CPU-s for 61.2 MiB, level 6 (xz's default) 233 CPU-s for 51.8 MiB. The bundle fits two
# calls either way, so the faster level is kept: it is most of the dry run's time on a cold cache (CI).
XZ_PRESET = 1
PIECE_MIB = 63
TARGET_MARKERS = {"python_version": PYTHON_VERSION, "python_full_version": f"{PYTHON_VERSION}.3",
                  "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                  "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def cache_dir() -> Path:
    return Path(os.environ.get("GTPO_CI_CACHE") or "/tmp/gtpo-ci-cache") / "gpu-bundle"


def target_options() -> list[str]:
    """pip's options for CPython 3.12 wheels on x86_64 Linux (glibc 2.35, Ubuntu 24.04's is 2.39)."""
    options = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp",
               "--abi", "cp312", "--abi", "abi3", "--abi", "none"]
    for minor in range(35, 16, -1):
        options += ["--platform", f"manylinux_2_{minor}_x86_64"]
    return options + ["--platform", "manylinux2014_x86_64", "--platform", "manylinux1_x86_64"]


def pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    logger.info("+ pip %s", " ".join(args[:3]))
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def resolve(wheels: Path) -> dict[str, str]:
    """{canonical name: version} of everything verl and the rest need on the target (pip's resolution, cached)."""
    key = hashlib.sha256(json.dumps([REQUIREMENTS, SOURCE_ONLY, target_options()]).encode()).hexdigest()[:16]
    report = cache_dir() / f"resolution-{key}.json"
    if not report.exists():
        for requirement in SOURCE_ONLY:
            pip("wheel", "--no-deps", "--quiet", "--wheel-dir", str(wheels), requirement)
        scratch = cache_dir() / "scratch-target"
        pip("install", "--dry-run", "--ignore-installed", "--quiet", "--target", str(scratch), "--report",
            str(report), *target_options(), "--find-links", str(wheels), *REQUIREMENTS)
    installs = json.loads(report.read_text(encoding="utf-8"))["install"]
    return {canonical(item["metadata"]["name"]): item["metadata"]["version"] for item in installs}


def carried(resolution: dict[str, str]) -> dict[str, str]:
    return {name: version for name, version in sorted(resolution.items())
            if name not in MACHINE_HAS or name in CARRIED_ALTHOUGH_THERE}


def wheel_files(wheels: Path) -> dict[str, list[Path]]:
    """The cached wheels by canonical distribution name (a name may have several versions in the cache)."""
    found: dict[str, list[Path]] = {}
    for path in sorted(wheels.glob("*.whl")):
        found.setdefault(canonical(path.name.split("-")[0]), []).append(path)
    return found


def wheel_version(path: Path) -> str:
    return path.name.split("-")[1]


def download(distributions: dict[str, str], wheels: Path) -> dict[str, Path]:
    """One wheel per distribution, ``name==version``, fetched into the cache when not there yet."""
    have = wheel_files(wheels)
    missing = [f"{name}=={version}" for name, version in distributions.items()
               if not any(wheel_version(path) == version for path in have.get(name, []))]
    if missing:
        pip("download", "--no-deps", "--quiet", *target_options(), "--find-links", str(wheels), "--dest", str(wheels),
            *missing)
    have = wheel_files(wheels)
    return {name: next(path for path in have[name] if wheel_version(path) == version)
            for name, version in distributions.items()}


@dataclass(frozen=True)
class Requirement:
    """One ``Requires-Dist`` line: who asks, for what name, which versions, with which extras."""

    wanted_by: str
    name: str
    specifier: str
    extras: frozenset[str]


def metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        name = next(item for item in archive.namelist() if item.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(archive.read(name).decode("utf-8"))


def requirements_of(wheel: Path, owner: str, extras: Iterable[str]) -> list[Requirement]:
    """The requirements of ``wheel`` that apply on the target with ``extras`` chosen."""
    from packaging.requirements import Requirement as Parsed

    result = []
    for line in metadata(wheel).get_all("Requires-Dist") or []:
        parsed = Parsed(line)
        applies = parsed.marker is None or any(
            parsed.marker.evaluate({**TARGET_MARKERS, "extra": extra}) for extra in (*extras, ""))
        if applies:
            result.append(Requirement(owner, canonical(parsed.name), str(parsed.specifier), frozenset(parsed.extras)))
    return result


def check_complete(wheels: dict[str, Path]) -> tuple[list[str], list[Requirement], set[str]]:
    """Walk the requirements from the top-level ones through the carried wheels' metadata.

    Returns the problems (a requirement met by no carried version and not the machine's, or a carried
    version outside its specifier), the requirements left to the machine's own packages, and the carried
    distributions the walk reached (the others are needed only by the machine's packages).
    """
    from packaging.requirements import Requirement as Parsed
    from packaging.specifiers import SpecifierSet

    problems: list[str] = []
    on_machine: list[Requirement] = []
    pending = [Requirement("bundle", canonical(Parsed(line).name), str(Parsed(line).specifier),
                           frozenset(Parsed(line).extras)) for line in REQUIREMENTS]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        requirement = pending.pop()
        wheel = wheels.get(requirement.name)
        if wheel is None:
            if requirement.name in MACHINE_HAS:
                on_machine.append(requirement)
            else:
                problems.append(f"{requirement.wanted_by} needs {requirement.name}{requirement.specifier}: not carried "
                                "and not on the machine")
            continue
        if not SpecifierSet(requirement.specifier).contains(wheel_version(wheel), prereleases=True):
            problems.append(f"{requirement.wanted_by} needs {requirement.name}{requirement.specifier}, the bundle "
                            f"carries {wheel_version(wheel)}")
        if (requirement.name, requirement.extras) not in seen:
            seen.add((requirement.name, requirement.extras))
            pending += requirements_of(wheel, requirement.name, requirement.extras)
    return problems, on_machine, {name for name, _ in seen}


def one_version_each(wheels: Iterable[Path]) -> list[str]:
    """Problems unless every carried wheel holds one ``.dist-info`` and no distribution comes twice."""
    problems, names = [], []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            infos = {item.split("/")[0] for item in archive.namelist() if item.split("/")[0].endswith(".dist-info")}
        if len(infos) != 1:
            problems.append(f"{wheel.name} holds {len(infos)} .dist-info folders")
        names += [canonical(info.rsplit("-", 1)[0]) for info in infos]
    problems += [f"{name} is carried in more than one version" for name in sorted({n for n in names
                                                                                   if names.count(n) > 1})]
    return problems


def wheel_members(wheel: Path) -> Iterable[tuple[str, zipfile.ZipInfo]]:
    """(path in site-packages, zip entry) of a wheel's files, ``.data/purelib`` and ``platlib`` folded in."""
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            path = info.filename
            data = re.match(r"[^/]+\.data/(purelib|platlib|scripts|headers|data)/(.*)", path)
            if data:
                if data.group(1) not in {"purelib", "platlib"}:
                    continue
                path = data.group(2)
            if path.startswith((*LEFT_OUT, *STRAY_TOP_LEVEL)):
                continue
            yield path, info


def add_wheel(archive: tarfile.TarFile, wheel: Path) -> int:
    """Add a wheel's files under ``site/`` (with their permission bits: Ray's binaries must stay executable)."""
    size = 0
    with zipfile.ZipFile(wheel) as source:
        for path, info in wheel_members(wheel):
            content = source.read(info)
            entry = tarfile.TarInfo(f"site/{path}")
            entry.size, entry.mode = len(content), (info.external_attr >> 16) & 0o777 or 0o644
            archive.addfile(entry, io.BytesIO(content))
            size += len(content)
    return size


def plugin_metadata(folder: Path) -> Path:
    """This package's ``.dist-info`` alone (name, version, verl's plugin entry point), so that verl loads the
    plugin there as from an install while the code itself comes from the repository on ``PYTHONPATH``."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    version = re.search(r'^version\s*=\s*"([^"]+)"', text, flags=re.MULTILINE)
    entry = re.search(r'^\[project\.entry-points\."verl\.plugins"\]\n(.+)$', text, flags=re.MULTILINE)
    if version is None or entry is None:
        raise SystemExit(f"{REPO / 'pyproject.toml'}: no version or verl.plugins entry point")
    info = folder / f"gtpo_plugin-{version.group(1)}.dist-info"
    shutil.rmtree(folder, ignore_errors=True)
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: gtpo-plugin\nVersion: {version.group(1)}\n",
                                   encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[verl.plugins]\n{entry.group(1)}\n", encoding="utf-8")
    return folder


def build_smoke_dir() -> Path:
    """The recipe's dry run at ``SMOKE_DIR``: tiny model, parquet data and the six resolved configs."""
    env = {**os.environ, "SMOKE_DIR": str(SMOKE_DIR), "DRY_RUN": "1", "VERL_USE_EXTERNAL_PLUGINS": "none",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    shutil.rmtree(SMOKE_DIR, ignore_errors=True)
    subprocess.run(["bash", str(REPO / "recipes" / "run_smoke_1gpu.sh")], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return SMOKE_DIR


def pack(items: list[tuple[str, Path]], out: Path, piece_mib: float) -> list[Path]:
    """Write the items into ``call-NN/piece-NN-of-MM.tar.xz`` files under ``piece_mib`` (one folder per call).

    Each item is compressed on its own first (cached by content), so its compressed size is known; pieces
    are filled first-fit, largest first, and are tars of those compressed parts (one level, read in order).
    """
    parts = []
    for kind, source in items:
        parts.append(compressed_part(kind, source))
    limit = piece_mib * 2**20
    pieces: list[list[Path]] = []
    for part in sorted(parts, key=lambda path: -path.stat().st_size):
        size = part.stat().st_size
        if size > limit:
            raise SystemExit(f"gpu_bundle: {part.name} alone is {size / 2**20:.1f} MiB, over --piece-mib {piece_mib}")
        home = next((piece for piece in pieces if sum(p.stat().st_size for p in piece) + size <= limit), None)
        if home is None:
            pieces.append(home := [])
        home.append(part)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    written = []
    for index, piece in enumerate(pieces, start=1):
        path = out / f"call-{index:02d}" / f"piece-{index:02d}-of-{len(pieces):02d}.tar.xz"
        path.parent.mkdir()
        with tarfile.open(path, "w") as archive:  # the parts are xz already
            for part in piece:
                archive.add(part, arcname=part.name)
        written.append(path)
    return written


def compressed_part(kind: str, source: Path) -> Path:
    """One item as its own ``.tar.xz`` in the cache: a wheel's files under ``site/``, or the smoke folder."""
    parts = cache_dir() / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    if kind == "wheel":  # the name says what was left out and the level, so that a change is not cached over
        rules = hashlib.sha256(repr((LEFT_OUT, STRAY_TOP_LEVEL, XZ_PRESET)).encode()).hexdigest()[:8]
        path = parts / f"{source.name}.{rules}.tar.xz"
        if not path.exists():
            with tarfile.open(path.with_suffix(".tmp"), "w:xz", preset=XZ_PRESET) as archive:
                add_wheel(archive, source)
            path.with_suffix(".tmp").rename(path)
        return path
    path = parts / f"{kind}.tar.xz"
    with tarfile.open(path, "w:xz", preset=XZ_PRESET) as archive:
        archive.add(source, arcname="smoke_run" if kind == "smoke" else "site")
    return path


def build(out: Path, piece_mib: float) -> int:
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    distributions = carried(resolve(wheels))
    files = download(distributions, wheels)
    problems, on_machine, reached = check_complete(files)
    for name in sorted(set(files) - reached):
        logger.info("not carried: %s (only the machine's own packages ask for it)", name)
        del files[name]
    problems += one_version_each(files.values())
    if problems:
        print("bundle incomplete:", *problems, sep="\n  ", file=sys.stderr)
        return 1
    manifest = {"carried": {name: wheel_version(path) for name, path in files.items()},
                "from_machine": sorted({f"{r.name}{r.specifier}" for r in on_machine}),
                "smoke_dir": str(SMOKE_DIR)}
    smoke = build_smoke_dir()
    (smoke / "bundle.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    plugin = plugin_metadata(cache_dir() / "plugin-site")
    tree_mib = working_tree_mib()
    piece_mib = min(piece_mib, CALL_LIMIT_MIB - tree_mib - 0.5)  # each call also carries the working tree
    pieces = pack([*(("wheel", path) for path in files.values()), ("smoke", smoke), ("plugin", plugin)], out,
                  piece_mib)
    largest = max(piece.stat().st_size for piece in pieces) / 2**20
    print(f"bundle: {len(files)} distributions for CPython {PYTHON_VERSION} (verl {manifest['carried']['verl']}, "
          f"transformers {manifest['carried']['transformers']}, tokenizers {manifest['carried']['tokenizers']}), "
          f"each one version, every requirement met; {len(manifest['from_machine'])} left to the machine's packages")
    for piece in pieces:
        print(f"  {piece}: {piece.stat().st_size / 2**20:.1f} MiB")
    print(f"working tree: {tree_mib:.1f} MiB")
    print(f"device calls: {len(pieces)}")
    print(f"largest piece: {largest:.1f} MiB")
    if largest + tree_mib > CALL_LIMIT_MIB:
        print(f"a call would carry {largest + tree_mib:.1f} MiB, over {CALL_LIMIT_MIB}", file=sys.stderr)
        return 1
    return 0


def working_tree_mib() -> float:
    """What the device tool copies besides the carried paths: tracked files and untracked, unignored ones."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True).stdout.split(b"\0")
    return sum((REPO / os.fsdecode(name)).stat().st_size for name in listed
               if name and (REPO / os.fsdecode(name)).is_file()) / 2**20


PIECES_STILL_TO_COME = 3  # install's exit status while pieces of a several-call bundle are missing


def install(bundle: Path, target: Path, machine_check: bool = True) -> int:
    """Unpack the pieces in ``bundle`` (any ``call-NN`` folder) into ``target``, ``site/`` and ``smoke_run/``,
    then check the unpacked files and the machine's versions. Pieces of earlier calls stay installed
    (listed in ``target/pieces.txt``); until all are there, it says which are missing and returns 3."""
    target.mkdir(parents=True, exist_ok=True)
    record = target / "pieces.txt"
    installed = set(record.read_text(encoding="utf-8").split()) if record.exists() else set()
    pieces = sorted(bundle.glob("call-*/piece-*-of-*.tar.xz"))
    if not pieces and not installed:
        print(f"no piece-NN-of-MM.tar.xz under {bundle}/call-NN/", file=sys.stderr)
        return 1
    for piece in pieces:
        if piece.name in installed:
            continue
        with tarfile.open(piece) as outer:
            for member in outer.getmembers():
                part = outer.extractfile(member)
                assert part is not None
                with tarfile.open(fileobj=part, mode="r:xz") as inner:
                    inner.extractall(target, filter="tar")
        installed.add(piece.name)
        record.write_text("\n".join(sorted(installed)) + "\n", encoding="utf-8")
    total = int(re.search(r"-of-(\d+)\.tar\.xz$", next(iter(installed))).group(1))
    missing = [f"piece-{i:02d}-of-{total:02d}.tar.xz" for i in range(1, total + 1)
               if f"piece-{i:02d}-of-{total:02d}.tar.xz" not in installed]
    if missing:
        print(f"installed {len(installed)} of {total} pieces; carry the rest in the next call: {', '.join(missing)}")
        return PIECES_STILL_TO_COME
    manifest = json.loads((target / "smoke_run" / "bundle.json").read_text(encoding="utf-8"))
    unpacked = problems_unpacked(target / "site", manifest["carried"])
    if unpacked:
        print("bundle unpacked wrongly:", *unpacked, sep="\n  ", file=sys.stderr)
        return 1
    if not machine_check:
        print(f"unpacked {len(manifest['carried'])} distributions into {target / 'site'} (machine not checked)")
        return 0
    problems = machine_problems(manifest["from_machine"])
    for problem in problems:
        print(f"machine: {problem}", file=sys.stderr)
    wanted = len(manifest["from_machine"])
    print(f"installed {len(manifest['carried'])} distributions into {target / 'site'}; "
          f"{wanted - len(problems)} of {wanted} requirements on the machine's packages met")
    return 1 if problems else 0


def problems_unpacked(site: Path, carried: dict[str, str]) -> list[str]:
    """Every carried distribution's ``.dist-info`` once, at its version; no Java jars; verl's tests/ not there."""
    infos: dict[str, list[str]] = {}
    for info in site.glob("*.dist-info"):
        name, version = info.name[: -len(".dist-info")].rsplit("-", 1)
        infos.setdefault(canonical(name), []).append(version)
    problems = [f"{name}: {infos.get(name)} unpacked, {version} carried" for name, version in carried.items()
                if infos.get(name) != [version]]
    problems += [f"{site / path} is there" for path in (*LEFT_OUT, *STRAY_TOP_LEVEL) if (site / path).exists()]
    if not os.access(site / "ray" / "core" / "src" / "ray" / "gcs" / "gcs_server", os.X_OK):
        problems.append("Ray's gcs_server is not executable")
    return problems


def machine_problems(requirements: Sequence[str]) -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement as Parsed

    problems = []
    for line in requirements:
        parsed = Parsed(line)
        try:
            installed = version(parsed.name)
        except PackageNotFoundError:
            problems.append(f"{line}: not installed")
            continue
        if not parsed.specifier.contains(installed, prereleases=True):
            problems.append(f"{line}: the machine has {installed}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="resolve, download, check and pack (here, with network)")
    build_parser.add_argument("--out", type=Path, default=REPO / "build" / "gpu_bundle")
    build_parser.add_argument("--piece-mib", type=float, default=PIECE_MIB)
    install_parser = commands.add_parser("install", help="unpack on the GPU machine and check its versions")
    install_parser.add_argument("bundle", type=Path)
    install_parser.add_argument("--target", type=Path, default=SMOKE_DIR.parent)
    install_parser.add_argument("--no-machine-check", action="store_true",
                                help="only unpack and check the unpacked files (a dry run off the GPU machine)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "build":
        return build(args.out.resolve(), args.piece_mib)
    return install(args.bundle, args.target, machine_check=not args.no_machine_check)


if __name__ == "__main__":
    sys.exit(main())
