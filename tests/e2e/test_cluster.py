"""Sweeps on a real three-node Ray cluster on this machine (deploy/local-cluster.sh):
a CPU head and two workers that each advertise a fake GPU of another type
(A100 / A100-SXM4-40GB and H100 / H100-SXM-80GB). With no CUDA the runner runs on
the CPU, but every row records the GPU type it asked for and the node it ran on.
Token authentication stays on, as Ray 2.60 starts it; drivers set RAY_AUTH_MODE=token."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pytest

from stepscope.analysis.warehouse import connect

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
A100_NODE_TYPES = {"A100", "A100-SXM4-40GB"}
H100_NODE_TYPES = {"H100", "H100-SXM-80GB"}


def q(store, sql):
    return connect(str(store)).execute(sql).fetchall()


def node_types(cluster) -> dict[str, set[str]]:
    """node_id -> the GPU names it advertises, read from the cluster itself."""
    import json
    import subprocess
    import sys

    code = (
        "import json, ray\n"
        f"ray.init(address={cluster.address!r}, logging_level='ERROR')\n"
        "print(json.dumps({n['NodeID']: [k.split(':', 1)[1] for k in n['Resources'] "
        "if k.startswith(('accelerator_type:', 'gpu_model:'))] for n in ray.nodes() if n['Alive']}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **cluster.env},
                         capture_output=True, text=True, check=True, timeout=60)
    return {k: set(v) for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def assert_one_trial_per_gpu_at_a_time(store):
    rows = q(store, "select node_id, started_at, ended_at from trials where status = 'ok' order by node_id, started_at")
    by_node: dict[str, list] = {}
    for node, start, end in rows:
        by_node.setdefault(node, []).append((start, end))
    for node, spans in by_node.items():
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert end <= start, f"two trials at once on {node}"


def test_gpus_each_runs_the_grid_on_every_type(local_cluster, write_spec, stepscope, tmp_path):
    spec = write_spec(
        """
        name: each
        isolation: reuse
        fixed: {workload: "sleepy:build", iterations: 3, warmup: 1, forward_ms: 30}
        grid:
          batch_size: [2, 4, 8]
        gpus: each
        """,
        with_modules=("sleepy",),
    )
    plan = stepscope("plan", spec, check_rc=0)
    assert "per GPU type the cluster has" in plan.stdout
    run = stepscope("run", spec, "--address", local_cluster.address, "--store", "results", env=local_cluster.env, check_rc=0)
    assert "A100-SXM4-40GB: 3 ok" in run.stdout and "H100-SXM-80GB: 3 ok" in run.stdout
    types = node_types(local_cluster)
    rows = q(tmp_path / "results", "select gpu, node_id, device_kind, batch_size from trials")
    assert sorted((r[0], r[3]) for r in rows) == sorted(
        (g, b) for g in ("A100-SXM4-40GB", "H100-SXM-80GB") for b in (2, 4, 8)
    )
    for gpu, node_id, kind, _ in rows:
        assert gpu in types[node_id], f"{gpu} ran on a node advertising {types[node_id]}"
        assert kind == "cpu"  # the GPUs are logical here; the runner fell back to the CPU
    assert_one_trial_per_gpu_at_a_time(tmp_path / "results")
    # The two GPU types side by side: one row per batch size, each value again from a plain loop.
    out = stepscope("compare", "--by", "gpu_model", "--store", "results", "--format", "json", "--metric", "step_ms",
                    check_rc=0)
    document = json.loads(out.stdout)
    assert document["baseline"] == "A100-SXM4-40GB" and document["values"] == ["A100-SXM4-40GB", "H100-SXM-80GB"]
    steps = q(tmp_path / "results", "select t.gpu, t.batch_size, s.iteration, sum(s.duration_ms) from trials t "
                                    "join steps s using (sweep_id, trial_id) where not s.is_warmup group by all")
    totals: dict[tuple, list[float]] = {}
    for gpu, batch, _, ms in steps:
        totals.setdefault((gpu, batch), []).append(ms)
    by_batch = {r["batch_size"]: r for r in document["rows"]}
    assert sorted(by_batch) == [2, 4, 8]
    for batch, r in by_batch.items():
        # 3 measured steps: one block (of ceil(cbrt(3)) = 2 steps, the last taking the third), its median.
        assert r["baseline_value"] == pytest.approx(statistics.median(totals[("A100-SXM4-40GB", batch)]), rel=1e-12)
        assert r["other_value"] == pytest.approx(statistics.median(totals[("H100-SXM-80GB", batch)]), rel=1e-12)
        assert (r["n_baseline"], r["n_other"]) == (1, 1) and r["p_value"] is None
        assert r["verdict"] in ("same", "unsure")  # one sample a side: never a significant verdict
    assert document["environment"] == [{"value": "H100-SXM-80GB", "field": "gpu_model",
                                        "baseline": "A100-SXM4-40GB", "other": "H100-SXM-80GB"}]
    report = stepscope("report", "--out", "report.html", "--store", "results", check_rc=0)
    assert "report.html" in report.stdout
    page = (tmp_path / "report.html").read_text()
    assert "A100-SXM4-40GB" in page and "H100-SXM-80GB" in page and "http://" not in page.replace("http://www.w3.org", "")


def test_process_isolation_takes_each_tasks_gpu_and_cpus(local_cluster, write_spec, stepscope, tmp_path):
    """Each trial runs in a process of its own, forked from a server that started without the
    task's CUDA_VISIBLE_DEVICES and OMP_NUM_THREADS: the process must see what Ray set for
    its task (the node's one GPU, one CPU per GPU here) before torch reads them."""
    import json

    record = tmp_path / "seen"
    record.mkdir()
    spec = write_spec(
        f"""
        name: isolated
        fixed: {{workload: "leaky:build", batch_size: 2, iterations: 1, warmup: 0, count_flops: false,
                record_dir: "{record}"}}
        grid:
          seed: [0, 1, 2, 3]
        gpus: [A100, H100]
        """,
        with_modules=("leaky",),
    )
    stepscope("run", spec, "--address", local_cluster.address, "--store", "results", env=local_cluster.env, check_rc=0)
    seen = [json.loads(p.read_text()) for p in record.glob("*.json")]
    assert len(seen) == 8 and len({s["pid"] for s in seen}) == 8
    for s in seen:
        assert (s["builds_before"], s["cudnn_benchmark"], s["leaked_env"]) == (0, False, None), s
        assert (s["cuda_visible_devices"], s["omp_num_threads"], s["torch_threads"]) == ("0", "1", 1), s
    assert sorted(r[0] for r in q(tmp_path / "results", "select pid from trials")) == sorted(s["pid"] for s in seen)
    assert_one_trial_per_gpu_at_a_time(tmp_path / "results")


def test_coarse_and_precise_names_target_the_right_nodes(local_cluster, write_spec, stepscope, tmp_path):
    spec = write_spec(
        """
        name: named
        isolation: reuse
        fixed: {workload: mlp, depth: 1, width: 8, input_dim: 8, iterations: 2, warmup: 0}
        grid:
          batch_size: [4, 8]
        gpus: [A100, H100-SXM-80GB]
        """
    )
    stepscope("run", spec, "--address", local_cluster.address, "--store", "results", env=local_cluster.env, check_rc=0)
    types = node_types(local_cluster)
    rows = q(tmp_path / "results", "select gpu, node_id, gpu_model from trials")
    assert sorted(r[0] for r in rows) == ["A100", "A100", "H100-SXM-80GB", "H100-SXM-80GB"]
    for gpu, node_id, model in rows:
        assert types[node_id] == (A100_NODE_TYPES if gpu == "A100" else H100_NODE_TYPES)
        # Asked for by its coarse type or its precise label, the board is stored as what it is.
        assert model == ("A100-SXM4-40GB" if gpu == "A100" else "H100-SXM-80GB")


def test_unknown_gpu_type_lists_the_types_present(local_cluster, write_spec, stepscope, tmp_path):
    spec = write_spec("name: v\ngrid: {workload: [mlp]}\ngpus: [V100, H100]\n")
    run = stepscope("run", spec, "--address", local_cluster.address, "--store", "results", env=local_cluster.env, check_rc=2)
    last = run.stderr.strip().splitlines()[-1]
    assert last == "Error: gpus: no node of the cluster has V100; GPU types present: A100, A100-SXM4-40GB, H100, H100-SXM-80GB"
    assert not (tmp_path / "results").exists()


def test_trial_timeout_is_stored_and_the_sweep_goes_on(local_cluster, write_spec, stepscope, tmp_path):
    spec = write_spec(
        """
        name: slow
        isolation: reuse
        fixed: {workload: "sleepy:build", iterations: 3, warmup: 0}
        grid:
          forward_ms: [5, 4000]
        gpus: [H100]
        """,
        with_modules=("sleepy",),
    )
    run = stepscope("run", spec, "--address", local_cluster.address, "--store", "results", "--trial-timeout", "6",
                    env=local_cluster.env, check_rc=1)
    assert "(1 ok, 1 timeout)" in run.stdout
    rows = q(tmp_path / "results", "select status, error from trials order by status")
    assert rows == [("ok", None), ("timeout", "timed out after 6s (--trial-timeout)")]


def test_ray_client_address(local_cluster, write_spec, stepscope, tmp_path):
    """Also: with no RAY_AUTH_MODE set, a driver that has the token uses it."""
    spec = write_spec(
        "name: client\nisolation: reuse\nfixed: {workload: mlp, depth: 1, width: 8, input_dim: 8, iterations: 2}\n"
        "grid: {batch_size: [4]}\ngpus: [A100]\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    os_env_backup = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        stepscope("run", spec, "--address", local_cluster.client_address, "--store", "results", check_rc=0)
    finally:
        os.environ.clear()
        os.environ.update(os_env_backup)
    assert q(tmp_path / "results", "select status, gpu from trials") == [("ok", "A100")]


def test_submit_ships_the_spec_and_its_custom_module(local_cluster, write_spec, stepscope, tmp_path):
    (tmp_path / "proj").mkdir()
    spec = write_spec(
        """
        name: submitted
        isolation: reuse
        fixed: {workload: "jobwork:build", iterations: 2, warmup: 0, forward_ms: 5}
        grid:
          batch_size: [2, 4]
        gpus: each
        """,
        name="proj/sweep.yaml",
    )
    # The module sits beside the spec only: no worker could import it unless it travels.
    (tmp_path / "proj" / "jobwork.py").write_text((FIXTURES / "sleepy.py").read_text())
    store = tmp_path / "shared-results"
    sub = stepscope("submit", spec, "--address", local_cluster.jobs_address, "--store", str(store), "--wait",
                    env=local_cluster.env, timeout=400)
    assert sub.returncode == 0, sub.stdout + sub.stderr[-3000:]
    job_id = sub.stdout.splitlines()[0]
    assert job_id.startswith("raysubmit_") and "SUCCEEDED" in sub.stderr
    status = stepscope("jobs", "status", job_id, "--address", local_cluster.jobs_address, env=local_cluster.env, check_rc=0)
    assert status.stdout.startswith(f"{job_id}: SUCCEEDED")
    logs = stepscope("jobs", "logs", job_id, "--address", local_cluster.jobs_address, env=local_cluster.env, check_rc=0)
    assert "4 trials run (4 ok)" in logs.stdout
    query = stepscope("query", "trials", "--store", str(store), "--format", "csv", check_rc=0)
    assert query.stdout.count(",ok,") == 4 and "jobwork:build" in query.stdout


def test_submit_refuses_a_store_the_cluster_cannot_reach(local_cluster, write_spec, stepscope):
    spec = write_spec("name: rel\ngrid: {workload: [mlp]}\n")
    sub = stepscope("submit", spec, "--address", local_cluster.jobs_address, "--store", "relative/results", env=local_cluster.env)
    assert sub.returncode == 2 and "the sweep's driver runs on the cluster" in sub.stderr
    missing = stepscope("jobs", "status", "raysubmit_nosuchjob", "--address", local_cluster.jobs_address, env=local_cluster.env)
    assert missing.returncode == 2 and "no job 'raysubmit_nosuchjob'" in missing.stderr


def test_jobs_stop_prints_a_submit_resume_the_user_can_run(local_cluster, write_spec, stepscope, tmp_path):
    """Stopped mid-sweep, a submitted sweep says how to resume it from here (`jobs stop`
    and the job's log alike): a `submit` of the user's spec path and store, which, run as
    printed, finishes the same sweep with every trial stored once."""
    import shlex

    spec = write_spec(
        """
        name: stoppable
        isolation: reuse
        fixed: {workload: "sleepy:build", iterations: 3, warmup: 0, forward_ms: 1000}
        grid:
          batch_size: [1, 2, 3, 4, 5, 6]
        """,
        name="my sweeps/it's.yaml", with_modules=("sleepy",),
    )
    given = os.path.relpath(spec, tmp_path)  # as the user typed it, from where they are
    store = str(tmp_path / "shared results")
    where = local_cluster.jobs_address
    job_id = stepscope("submit", given, "--address", where, "--store", store, env=local_cluster.env,
                       check_rc=0).stdout.strip()

    def logs() -> str:
        return stepscope("jobs", "logs", job_id, "--address", where, env=local_cluster.env, check_rc=0).stdout

    deadline = time.monotonic() + 120
    while " ok " not in logs():  # one trial stored, some still to run
        assert time.monotonic() < deadline, logs()
        time.sleep(1)
    stop = stepscope("jobs", "stop", job_id, "--address", where, env=local_cluster.env, check_rc=0)
    expected = shlex.join(["stepscope", "submit", given, "--address", where, "--store", store, "--resume"])
    assert stop.stdout == f"{job_id}: stopping\n"
    assert stop.stderr == f"trials finished so far stay stored; resume with: {expected}\n"
    while "STOPPED" not in stepscope("jobs", "status", job_id, "--address", where, env=local_cluster.env).stdout:
        assert time.monotonic() < deadline + 60
        time.sleep(1)
    assert f"Resume with: {expected}" in logs()
    stored = q(store, "select count(*) from trials")[0][0]
    assert 1 <= stored < 6

    again = shlex.split(expected)
    assert again[0] == "stepscope"
    resumed = stepscope(*again[1:], "--wait", env=local_cluster.env, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr[-3000:]
    assert f"{6 - stored} trials run ({6 - stored} ok); {stored} already stored" in resumed.stdout
    assert q(store, "select count(distinct sweep_id), count(*), count(distinct trial_id) from trials "
                    "where status = 'ok'") == [(1, 6, 6)]


def test_a_worker_node_killed_mid_sweep(fresh_cluster, write_spec, stepscope, tmp_path):
    """kill -9 of a whole worker node while its trial runs: retried on the other node,
    the sweep completes, every trial appears exactly once. (Its own cluster: it kills a node.)"""
    spec = write_spec(
        """
        name: lost
        isolation: reuse
        fixed: {workload: "sleepy:build", iterations: 6, warmup: 0, forward_ms: 400}
        grid:
          seed: [0, 1, 2, 3, 4, 5]
        """,
        with_modules=("sleepy",),
    )
    store = tmp_path / "results"
    a100 = fresh_cluster.node_pids()["a100"]

    def kill_when_running() -> None:
        deadline = time.monotonic() + 120
        # Once the first trial is stored, the next ones are running on both nodes.
        while time.monotonic() < deadline and not list(store.glob("trials/*/*.parquet")):
            time.sleep(0.1)
        time.sleep(1.0)
        # A machine that dies takes every process with it: the node's raylet and its
        # workers (Ray puts workers in process groups of their own, within the node's session).
        subprocess.run(["pkill", "-9", "-s", str(a100)], check=False)

    killer = threading.Thread(target=kill_when_running, daemon=True)
    killer.start()
    run = stepscope("run", spec, "--address", fresh_cluster.address, "--store", "results",
                    env=fresh_cluster.env, check_rc=0, timeout=400)
    killer.join()
    assert "retrying" in run.stderr and "(6 ok)" in run.stdout, run.stderr[-3000:]
    rows = q(store, "select trial_id, status, attempt from trials")
    assert len(rows) == 6 and len({r[0] for r in rows}) == 6 and {r[1] for r in rows} == {"ok"}
    assert max(r[2] for r in rows) == 2
    assert q(store, "select count(*) from (select trial_id, iteration, phase from steps group by all having count(*) > 1)") == [(0,)]


# ---------------------------------------------------------------- never a cluster merely found


def _recorded(tmp_path, address: str) -> dict:
    """An environment whose Ray temp folder records `address` as the latest `ray start`
    cluster, as /tmp/ray/ray_current_cluster does on a machine where one was started
    (a short path: Ray's socket names must fit in 107 bytes)."""
    import tempfile

    root = tempfile.mkdtemp(prefix="ssrec-", dir="/tmp")
    os.makedirs(os.path.join(root, "ray"))
    Path(root, "ray", "ray_current_cluster").write_text(address)
    return {"RAY_TMPDIR": root, "RAY_AUTH_MODE": "token"}


@pytest.mark.parametrize("record", ["live", "dead"])
def test_run_without_an_address_starts_its_own_cluster(record, local_cluster, write_spec, stepscope, tmp_path):
    """Without --address and RAY_ADDRESS, `run` starts its own local Ray and says so, whatever
    the machine records: a live foreign cluster (the local cluster, with its fake GPUs) is not
    joined, and a dead one's record (nothing listens on port 1) costs no wait."""
    import shutil

    address = local_cluster.address if record == "live" else "127.0.0.1:1"
    env = _recorded(tmp_path, address)
    spec = write_spec("name: own\nfixed: {iterations: 2, warmup: 0, batch_size: 4}\ngrid: {workload: [mlp]}\n")
    try:
        t0 = time.monotonic()
        proc = stepscope("run", spec, "--store", str(tmp_path / "s"), env=env, timeout=180, check_rc=0)
        took = time.monotonic() - t0
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    started = next(ln for ln in proc.stderr.splitlines() if ln.startswith("sweep "))
    assert "embedded local Ray at " in started and address not in started, started
    assert "1 node, " in started and "no GPUs" in started, started  # not the 3-node cluster with A100 and H100
    assert q(tmp_path / "s", "select status from trials") == [("ok",)]
    assert took < 120, f"{took:.0f} s"
    foreign = set(node_types(local_cluster))
    assert not foreign & {n for (n,) in q(tmp_path / "s", "select node_id from trials")}
