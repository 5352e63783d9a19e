"""Where a custom workload's module is: one answer for plan/run (a check) and submit (what to ship).

The module is found on the filesystem, never imported: checking a spec must not run
the user's code (which may import torch, or fail on this machine).
"""

from __future__ import annotations

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


def test_a_module_on_sys_path_is_found(tmp_path):
    assert locate_module("json:loads", []).endswith("json")  # a package: its directory
    assert find_custom_module("json.decoder:JSONDecoder", [])
