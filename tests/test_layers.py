"""The layer contract (pyproject.toml's [tool.importlinter]) holds, and really looks at the code.

`lint-imports` runs in CI too; here it also proves it can fail: a contract that the
code breaks on purpose (the runner does import torch) must be reported, so a
contract that silently checked nothing (say, a package it could not find through
src/stepscope's links) would fail this test.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")

pytestmark = pytest.mark.skipif(LINT is None, reason="import-linter is not installed (pip install -e '.[test]')")


def _lint(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--no-cache", "--config", str(config)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_the_layer_contract_is_kept():
    result = _lint(ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout and "Contracts: 0 kept" not in result.stdout
    # every module of the three folders was analysed, through the links
    files = sum(1 for d in ("orchestrator", "workloads", "analysis") for _ in (ROOT / d).rglob("*.py"))
    analysed = int(result.stdout.split("Analyzed ", 1)[1].split(" files", 1)[0])
    assert analysed >= files


def test_a_broken_contract_is_reported(tmp_path):
    config = tmp_path / "contract.toml"
    config.write_text(
        '[tool.importlinter]\nroot_package = "stepscope"\ninclude_external_packages = true\n\n'
        '[[tool.importlinter.contracts]]\nname = "on purpose: the runner without torch"\ntype = "forbidden"\n'
        'source_modules = ["stepscope.workloads.measure.runner"]\nforbidden_modules = ["torch"]\n'
    )
    result = _lint(config)
    assert result.returncode != 0
    assert "stepscope.workloads.measure.runner -> torch" in result.stdout
