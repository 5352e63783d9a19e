"""Shared fixtures: a CLI runner and a helper that writes a spec file."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

FIXTURES = Path(__file__).parent / "fixtures"


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run only where torch sees CUDA."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def cli_runner():
    from orchestrator.cli import cli

    runner = CliRunner()

    def invoke(*args: str, env: dict | None = None):
        return runner.invoke(cli, list(args), env=env, catch_exceptions=False)

    return invoke


@pytest.fixture
def write_spec(tmp_path):
    """write_spec(yaml_text, name='spec.yaml', with_modules=('sleepy',)) -> path."""

    def write(text: str, name: str = "spec.yaml", with_modules: tuple[str, ...] = ()) -> str:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        for mod in with_modules:
            shutil.copy(FIXTURES / f"{mod}.py", tmp_path / f"{mod}.py")
        return str(path)

    return write


@pytest.fixture(autouse=True)
def _no_store_env(monkeypatch):
    monkeypatch.delenv("STEPSCOPE_STORE", raising=False)
    if "RAY_ADDRESS" in os.environ:
        monkeypatch.delenv("RAY_ADDRESS")
