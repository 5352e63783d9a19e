"""The wheel ships the three packages and the SQL, and an installed copy finds its queries."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("hatchling")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("stepscope-*.whl")
    return path


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sql = {Path(n).name for n in names if n.startswith("stepscope/queries/")}
    assert {p.name for p in (ROOT / "queries").glob("*.sql")} == sql
    for pkg in ("stepscope", "stepscope/orchestrator", "stepscope/workloads", "stepscope/analysis", "stepscope/workloads/builtin"):
        assert f"{pkg}/__init__.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "stepscope = stepscope.orchestrator.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_installed_copy_finds_its_queries_without_a_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import stepscope.analysis, stepscope.analysis.queries as q\n"
        "print(stepscope.analysis.__file__)\n"
        "print(q.sql_dir())\n"
        "print(sorted(i.name for i in q.list_queries()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    assert out[0].startswith(str(site)) and out[1] == str(site / "stepscope" / "queries")
    assert "phase_breakdown" in out[2]
