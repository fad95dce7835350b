"""The README and docs/ say only what is there: links resolve, commands name scripts and entry points that
exist, and the ``gtpo/*`` metrics and ``algorithm.gtpo.*`` keys they name are the code's, all of them.

HTML comments (``<!-- ... -->``, the lead's slots) are not read. Each check is a small function, also
tested on a bad example so that it can fail.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import METRIC_KEYS

from gtpo_plugin import GTPOConfig, compute_gtpo_terms, gtpo_metrics

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted([REPO / "README.md", REPO / "recipes" / "README.md", *(REPO / "docs").glob("*.md")])

COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.DOTALL | re.MULTILINE)
METRIC = re.compile(r"(?<![\w/.~-])gtpo/([a-z_]+)")
GTPO_KEY = re.compile(r"algorithm\.gtpo\.([A-Za-z_]+)")
PROJECT_PATH = re.compile(r"^(?:\./)?((?:scripts|recipes)/[\w./{},-]+)$")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def text(page: Path) -> str:
    """A page without its HTML comments."""
    return COMMENT.sub("", page.read_text(encoding="utf-8"))


def broken_links(page: Path, body: str) -> list[str]:
    """Relative link targets in ``body`` (of ``page``) that name no file or folder; anchors are dropped."""
    broken = []
    for target in LINK.findall(body):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    return broken


def commands(body: str) -> list[list[str]]:
    """Each command of each ```bash block: continuation lines joined, comments dropped, split at ; && || |."""
    found = []
    for block in BASH_BLOCK.findall(body):
        for line in block.replace("\\\n", " ").splitlines():
            try:
                words = shlex.split(line, comments=True)
            except ValueError:  # an unbalanced quote in a prose-like line: read it word by word
                words = line.split("#", 1)[0].split()
            command: list[str] = []
            for word in [*words, ";"]:
                if word in {";", "&&", "||", "|", "do", "done", "then", "fi"}:
                    if command:
                        found.append(command)
                    command = []
                elif command or not ENV_ASSIGNMENT.match(word):
                    command.append(word.rstrip(";"))
    return found


def console_scripts() -> set[str]:
    """The names under ``[project.scripts]`` in pyproject.toml (read by hand: tomllib needs Python 3.11)."""
    section = (REPO / "pyproject.toml").read_text(encoding="utf-8").split("[project.scripts]\n", 1)[1]
    section = section.split("\n[", 1)[0]
    return {line.split("=", 1)[0].strip() for line in section.splitlines() if "=" in line}


def missing_programs(command: list[str], scripts: set[str]) -> list[str]:
    """The project scripts (scripts/..., recipes/...), entry points (gtpo-*) and ``python -m gtpo_plugin...``
    modules that ``command`` names and that do not exist."""
    missing = []
    if command and command[0].startswith("gtpo-") and command[0] not in scripts:
        missing.append(command[0])
    for word in command:
        match = PROJECT_PATH.match(word)
        if match:
            paths = expand_braces(match.group(1))
            missing += [path for path in paths if not (REPO / path).exists()]
    for flag, module in zip(command, command[1:], strict=False):
        if flag == "-m" and module.startswith("gtpo_plugin"):
            base = REPO / module.replace(".", "/")
            if not ((base / "__main__.py").exists() or base.with_suffix(".py").exists()):
                missing.append(module)
    return missing


def expand_braces(word: str) -> list[str]:
    """``run_{a,b}.sh`` as bash expands it: ``run_a.sh``, ``run_b.sh`` (one brace group is enough here)."""
    match = re.search(r"\{([^{}]*,[^{}]*)\}", word)
    if not match:
        return [word]
    return [word[:match.start()] + part + word[match.end():] for part in match.group(1).split(",")]


def named(pattern: re.Pattern[str], bodies: list[str]) -> set[str]:
    return {name for body in bodies for name in pattern.findall(body)}


def code_metrics() -> set[str]:
    """The metric names ``gtpo_metrics`` returns, from one small GTPO computation."""
    responses = torch.tensor([[5, 7, 9], [5, 8, 0]])
    mask = (responses != 0).long()
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    terms = compute_gtpo_terms(rewards, mask, responses, np.array(["q", "q"], dtype=object),
                               torch.full((2, 3), 0.3), initial_entropy=0.5)
    return {name.removeprefix("gtpo/") for name in gtpo_metrics(terms)}


def code_keys() -> set[str]:
    return {field.name for field in dataclasses.fields(GTPOConfig)}


BODIES = {page: text(page) for page in PAGES}


# ------------------------------------------------------------------------------------------ the docs


def test_the_pages_are_there_and_the_readme_is_short():
    names = {page.relative_to(REPO).as_posix() for page in PAGES}
    assert {"README.md", "docs/README.md", "docs/verl.md", "docs/recipes.md", "docs/ab-testing.md",
            "docs/evaluation.md", "docs/core-api.md", "docs/development.md"} <= names
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 250


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(page):
    assert broken_links(page, BODIES[page]) == []


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO / target.split("#")[0]).resolve() for target in LINK.findall(BODIES[REPO / "README.md"])}
    assert {page.resolve() for page in PAGES if page.parent.name == "docs"} <= linked


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(REPO).as_posix())
def test_every_command_names_scripts_and_entry_points_that_exist(page):
    scripts = console_scripts()
    assert [(command, missing) for command in commands(BODIES[page])
            if (missing := missing_programs(command, scripts))] == []


def test_metrics_named_in_the_docs_are_the_codes_and_all_of_them():
    assert named(METRIC, list(BODIES.values())) == code_metrics()
    assert {f"gtpo/{name}" for name in code_metrics()} == METRIC_KEYS  # the tests' list, too


def test_gtpo_keys_named_in_the_docs_are_the_codes_and_all_of_them():
    assert named(GTPO_KEY, list(BODIES.values())) == code_keys()


# ------------------------------------------------------------------- the checks, on bad examples


def test_a_broken_link_is_found_and_urls_and_anchors_are_not(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("x")
    body = "[a](there.md#part) [b](gone.md) ![c](img/none.png) [d](https://example.org/x) [e](#top)"
    assert broken_links(page, body) == ["gone.md", "img/none.png"]


def test_comments_are_not_read(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("kept [a](gone.md) <!-- lead: [b](also_gone.md)\n gtpo/made_up -->")
    assert broken_links(page, text(page)) == ["gone.md"] and named(METRIC, [text(page)]) == set()


def test_commands_are_split_and_missing_programs_found():
    body = ("```bash\nFOO=1 bash scripts/no_such.sh --x  # a comment\n"
            "python scripts/compare_runs.py a b && gtpo-nothing run\n"
            "for s in 0 1; do SEED=$s bash recipes/run_gtpo_fsdp.sh; done\n"
            "python -m gtpo_plugin.no_such_module \\\n    --flag\n"
            "ls recipes/run_gtpo_{fsdp,nowhere}.sh\n```\n")
    found = commands(body)
    assert ["bash", "scripts/no_such.sh", "--x"] in found and ["gtpo-nothing", "run"] in found
    assert ["bash", "recipes/run_gtpo_fsdp.sh"] in found
    assert {"gtpo-demo", "gtpo-eval"} <= console_scripts()
    missing = [m for command in found for m in missing_programs(command, console_scripts())]
    assert missing == ["scripts/no_such.sh", "gtpo-nothing", "gtpo_plugin.no_such_module",
                       "recipes/run_gtpo_nowhere.sh"]


def test_metric_and_key_patterns_find_names_and_skip_paths():
    body = "`gtpo/protected_token_frac`, `gtpo/made_up`, ~/data/gtpo/gsm8k, `+algorithm.gtpo.gamma=1`"
    assert named(METRIC, [body]) == {"protected_token_frac", "made_up"}
    assert named(METRIC, [body]) != code_metrics() and named(GTPO_KEY, [body]) == {"gamma"}
