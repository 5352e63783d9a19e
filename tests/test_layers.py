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

pytestmark = [pytest.mark.skipif(LINT is None, reason="import-linter is not installed (pip install -e '.[test]')"),
              pytest.mark.slow]  # runs lint-imports


def _lint(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--no-cache", "--config", str(config)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_the_contract_reads_this_checkout_and_every_module_of_it():
    """lint-imports analyses the `stepscope` that Python imports: it must be this checkout
    (an editable install), and grimp must see every module of the three folders through
    src/stepscope's links, else a contract could hold vacuously."""
    grimp = pytest.importorskip("grimp")
    import stepscope

    assert Path(stepscope.__file__).resolve().parent == ROOT / "src" / "stepscope", (
        "stepscope is not imported from this checkout: `pip install -e .` before `lint-imports`")
    graph = grimp.build_graph("stepscope", include_external_packages=False, cache_dir=None)
    files = {
        ".".join(("stepscope", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
        for d in ("orchestrator", "workloads", "analysis") for path in (ROOT / d).rglob("*.py")
    }
    assert files and files <= graph.modules, sorted(files - graph.modules)


def test_the_layer_contract_is_kept():
    result = _lint(ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout and "Contracts: 0 kept" not in result.stdout


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
