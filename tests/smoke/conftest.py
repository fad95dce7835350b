"""The tiny smoke-run model, built once per test session (a few seconds on CPU)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    from gtpo_plugin.smoke.tiny_model import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny_model") / "model", seed=0)
