"""What `stepscope submit` ships: the spec, the custom workload modules it names, and the
local modules those import (transitively), read from their source, never run."""

from __future__ import annotations

import os

from stepscope.orchestrator.grid import expand
from stepscope.orchestrator.jobs import module_files, staged
from stepscope.orchestrator.spec import load_spec, search_paths


def _project(tmp_path):
    (tmp_path / "workloads").mkdir()
    (tmp_path / "workloads" / "__init__.py").write_text("")
    (tmp_path / "workloads" / "helpers.py").write_text("from tools import scale\n")
    (tmp_path / "tools.py").write_text("import json\n\ndef scale(x):\n    return x\n")
    (tmp_path / "side.py").write_text(
        "import torch  # installed: the cluster's to provide\n"
        "from workloads.helpers import scale  # local: ships\n\n"
        "def build(params):\n    raise RuntimeError('never run while staging')\n"
    )
    (tmp_path / "unrelated.py").write_text("x = 1\n")
    (tmp_path / "sweep.yaml").write_text("name: side\ngrid:\n  workload: ['side:build']\n")
    return load_spec(str(tmp_path / "sweep.yaml"))


def test_local_modules_a_workload_imports_travel_with_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = _project(tmp_path)
    shipped = module_files(spec, ["side:build"], search_paths(spec))
    assert shipped == sorted(str(tmp_path / n) for n in ("side.py", "tools.py", "workloads"))


def test_the_staged_job_directory_holds_the_spec_and_those_modules_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = _project(tmp_path)
    with staged(spec, expand(spec), search_paths(spec)) as workdir:
        files = sorted(os.path.relpath(os.path.join(d, f), workdir) for d, _, fs in os.walk(workdir) for f in fs)
    assert files == ["side.py", "sweep.yaml", "tools.py", "workloads/__init__.py", "workloads/helpers.py"]
