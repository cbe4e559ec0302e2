"""Test-wide settings: keep every cache and Prefect home inside pytest's tmp dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from castlab.runtime import setup_runtime

setup_runtime()
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("CASTLAB_PROFILE", "tiny")


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh workspace root for one test (CASTLAB_WORKSPACE)."""
    root = tmp_path / "workspace"
    root.mkdir()
    monkeypatch.setenv("CASTLAB_WORKSPACE", str(root))
    return root


@pytest.fixture(scope="module")
def models_workspace(tmp_path_factory: pytest.TempPathFactory):
    """A workspace shared by a test module for the tiny base model (built once, then loaded)."""
    root = tmp_path_factory.getbasetemp() / "tiny-models-workspace"
    root.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CASTLAB_WORKSPACE", str(root))
        yield root
