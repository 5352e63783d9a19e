"""Where a custom workload's module is: one answer for plan/run (a check) and submit (what to ship).

The module is found on the filesystem, never imported: checking a spec must not run
the user's code (which may import torch, or fail on this machine).
"""

from __future__ import annotations

import pytest

from stepscope.workloads.registry import find_custom_module, locate_module


def _project(tmp_path):
    pkg = tmp_path / "workloads"  # a user's own package with stepscope's old import name
    (pkg / "deep").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('checking a spec must not import this')\n")
    (pkg / "mine.py").write_text("def build(params): ...\n")
    (pkg / "deep" / "__init__.py").write_text("")
    (pkg / "deep" / "net.py").write_text("def build(params): ...\n")
    (tmp_path / "side.py").write_text("def build(params): ...\n")
    return str(tmp_path)


def test_a_users_workloads_package_is_found_beside_the_spec_and_never_imported(tmp_path):
    root = _project(tmp_path)
    assert locate_module("workloads.mine:build", [root]) == str(tmp_path / "workloads")
    assert locate_module("side:build", [root]) == str(tmp_path / "side.py")
    assert find_custom_module("workloads.mine:build", [root])
    assert find_custom_module("workloads.deep.net:build", [root])
    assert find_custom_module("side:build", [root])


def test_a_missing_module_or_submodule_is_not_found(tmp_path):
    root = _project(tmp_path)
    assert not find_custom_module("workloads.mien:build", [root])  # a typo in the submodule
    assert not find_custom_module("workloads.deep.nope:build", [root])
    assert not find_custom_module("side.sub:build", [root])  # a plain module has no submodules
    assert not find_custom_module("workloads.mine:build", [])  # not beside the spec: stepscope has no `workloads`
    assert locate_module("nosuchmodule_xyz:build", [root]) is None


@pytest.mark.slow  # a fresh interpreter
def test_a_module_on_sys_path_is_found(tmp_path):
    assert locate_module("json:loads", []).endswith("json")  # a package: its directory
    assert find_custom_module("json.decoder:JSONDecoder", [])


def _fresh(code: str, cwd) -> str:
    """Run `code` in a new interpreter in `cwd`, as a user's process would (pytest's own
    sys.path holds tests/, whose workloads/ folder is itself a namespace package)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_a_namespace_package_across_two_directories_is_found(tmp_path):
    beside, cwd = tmp_path / "specs", tmp_path / "cwd"
    (beside / "workloads").mkdir(parents=True)  # no __init__.py: a namespace package
    (cwd / "workloads").mkdir(parents=True)
    (beside / "workloads" / "helper.py").write_text("")
    (cwd / "workloads" / "mine.py").write_text("def build(params): ...\n")
    code = (
        "from stepscope.workloads.registry import find_custom_module as f\n"
        f"paths = [{str(beside)!r}, {str(cwd)!r}]\n"
        "print(f('workloads.mine:build', paths), f('workloads.helper:x', paths), f('workloads.other:build', paths))"
    )
    assert _fresh(code, cwd) == "True True False"


def test_a_workload_written_for_the_old_import_names_gets_told_the_new_one(tmp_path):
    (tmp_path / "oldstyle_wl.py").write_text("from workloads import Workload\n\ndef build(params): ...\n")
    code = (
        "from stepscope.workloads.registry import load_builder\n"
        "try:\n"
        f"    load_builder('oldstyle_wl:build', [{str(tmp_path)!r}])\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    assert _fresh(code, tmp_path) == (
        "No module named 'workloads'; stepscope's modules import as stepscope.workloads: "
        "write `from stepscope import Workload`"
    )
