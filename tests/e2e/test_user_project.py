"""A user's research project, as a new user lays it out: packages of their own called
`workloads/`, `analysis/` and `orchestrator/` beside the spec. stepscope installs only the
`stepscope` import name, so none of them is shadowed: `plan`, `trial`, `run` (embedded Ray)
and `submit` (Ray Jobs) import the user's `workloads.mine:build` and `side:build` (which
imports the user's `workloads.helpers`), and a notebook imports the user's `analysis.warehouse`
beside `stepscope.analysis.warehouse`. Every command runs with cwd = the project folder."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import stepscope.analysis.warehouse
from stepscope.analysis.warehouse import connect

pytestmark = pytest.mark.slow

WORKLOADS = ("side:build", "workloads.mine:build")

PROJECT = {
    "workloads/__init__.py": "",
    "workloads/helpers.py": """
        import torch

        WIDTH = 8


        def make_batch(n: int):
            return torch.randn(n, WIDTH), torch.randn(n, WIDTH)
        """,
    "workloads/mine.py": """
        import torch

        from stepscope import Workload
        from workloads.helpers import WIDTH, make_batch


        def build(params: dict) -> Workload:
            n = params["batch_size"]
            return Workload(
                model=torch.nn.Linear(WIDTH, WIDTH),
                make_batch=lambda: make_batch(n),
                loss_fn=torch.nn.functional.mse_loss,
            )
        """,
    # A module at the project root that uses the user's package too.
    "side.py": """
        import torch

        from stepscope import Workload
        from workloads.helpers import WIDTH, make_batch


        def build(params: dict) -> Workload:
            n = params["batch_size"]
            return Workload(
                model=torch.nn.Sequential(torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU()),
                make_batch=lambda: make_batch(n),
                loss_fn=torch.nn.functional.mse_loss,
            )
        """,
    "analysis/__init__.py": "",
    "analysis/warehouse.py": 'OWNER = "userproj"\n',
    "orchestrator/__init__.py": 'OWNER = "userproj"\n',
    "sweep.yaml": """
        name: userproj
        fixed: {iterations: 3, warmup: 1, batch_size: 4}
        grid:
          workload: ["workloads.mine:build", "side:build"]
          precision: [fp32]
        """,
    # A notebook cell: the user's analysis code beside stepscope's.
    "nb.py": """
        import analysis.warehouse
        import orchestrator
        import stepscope.analysis.warehouse

        assert analysis.warehouse.OWNER == "userproj" and orchestrator.OWNER == "userproj"
        print(analysis.warehouse.__file__)
        print(stepscope.analysis.warehouse.__file__)
        print(orchestrator.__file__)
        """,
}


@pytest.fixture
def project(tmp_path) -> Path:
    """The user's project, written into tmp_path: the cwd of the `stepscope` fixture."""
    for name, text in PROJECT.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return tmp_path


def assert_every_trial_ok(store: Path, workloads: tuple[str, ...] = WORKLOADS) -> None:
    """One trial per workload, each ok, no error, naming the user's workload."""
    rows = connect(str(store)).execute("select status, error, workload from trials order by workload").fetchall()
    assert rows == [("ok", None, w) for w in sorted(workloads)], rows


def processes_marked(marker: str) -> list[str]:
    """Live processes whose environment holds `marker`: a process started with it and every
    process it started (Ray's GCS, raylet, agents, workers, the trials' forks)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "environ").read_bytes().split(b"\0"):
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{proc.name}: {cmdline[:160]}")
        except OSError:  # gone, or not ours
            continue
    return found


def gone(marker: str, within: float = 15.0) -> list[str]:
    """What is still alive of `marker`'s processes after `within` seconds (Ray's shutdown is quick
    but not instant)."""
    deadline = time.monotonic() + within
    while (left := processes_marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_a_notebook_imports_the_users_analysis_beside_stepscopes(project):
    proc = subprocess.run([sys.executable, "nb.py"], cwd=project, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    users, ours, orchestrator = proc.stdout.splitlines()
    assert Path(users) == project / "analysis" / "warehouse.py"
    assert Path(orchestrator) == project / "orchestrator" / "__init__.py"
    assert ours == stepscope.analysis.warehouse.__file__ and Path(ours).resolve() != Path(users).resolve()


def test_plan_and_trial_import_the_users_workloads_package(project, stepscope):
    plan = stepscope("plan", "sweep.yaml", check_rc=0)
    assert plan.stdout.splitlines()[0].startswith("userproj: 2 trials")
    assert "workload=workloads.mine:build" in plan.stdout and "workload=side:build" in plan.stdout
    # Trial 0 is workloads.mine:build (`run` and `submit` below run side:build too).
    trial = stepscope("trial", "sweep.yaml", "--index", "0", "--store", "./s", check_rc=0)
    assert trial.stdout.startswith("ok: "), trial.stdout + trial.stderr
    assert_every_trial_ok(project / "s", ("workloads.mine:build",))


def test_run_on_an_embedded_ray_imports_the_users_workloads_package(project, stepscope):
    marker = f"STEPSCOPE_TEST_RUN={uuid.uuid4().hex}"
    current = Path(tempfile.gettempdir(), "ray", "ray_current_cluster")
    had_current = current.exists()
    run = stepscope("run", "sweep.yaml", "--store", "./s2", env=dict([marker.split("=", 1)]), check_rc=0)
    assert "2 trials run (2 ok)" in run.stdout
    assert "embedded local Ray" in run.stderr  # its own cluster, not one found on the machine
    assert_every_trial_ok(project / "s2")
    # The embedded cluster ends with the command: none of its processes is left, and it
    # left no `ray_current_cluster` behind for a later `ray.init()` to find.
    assert gone(marker) == []
    assert current.exists() == had_current


def test_submit_ships_the_users_workloads_package_to_the_cluster(local_cluster, project, stepscope):
    store = project / "shared-results"  # absolute: the job's driver runs on the cluster
    sub = stepscope("submit", "sweep.yaml", "--address", local_cluster.jobs_address, "--store", str(store), "--wait",
                    env=local_cluster.env, timeout=300)
    assert sub.returncode == 0, sub.stdout + sub.stderr[-3000:]
    assert sub.stdout.splitlines()[0].startswith("raysubmit_") and "SUCCEEDED" in sub.stderr
    assert_every_trial_ok(store)
