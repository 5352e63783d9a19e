"""Sweeps through `stepscope run` on an embedded Ray cluster, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
STEPSCOPE = [sys.executable, "-m", "stepscope"]

PHASE_MS = {"data": 20, "forward": 40, "loss": 10, "backward": 60, "optimizer": 30}


def q(store, sql):
    from stepscope.analysis.warehouse import connect

    return connect(str(store)).execute(sql).fetchall()


def test_timing_truth_failures_and_one_trial_per_node_at_a_time(write_spec, stepscope, tmp_path):
    sleeps = ", ".join(f"{k}_ms: {v}" for k, v in PHASE_MS.items())
    spec = write_spec(
        f"""
        name: e2e
        fixed: {{workload: "sleepy:build", iterations: 8, warmup: 2, batch_size: 2, {sleeps}}}
        grid:
          fail_at: [-1, 3]
          seed: [0, 1]
        """,
        with_modules=("sleepy",),
    )
    proc = stepscope("run", spec, "--store", "results", check_rc=1)
    assert "2 ok, 2 failed" in proc.stdout
    assert proc.stdout.count("failed: sleepy:build") == 2
    store = tmp_path / "results"

    rows = q(store, "select trial_id, status, error, pid, started_at, ended_at from trials order by started_at")
    assert [r[1] for r in rows].count("ok") == 2 and len(rows) == 4
    assert all("boom: asked to fail" in r[2] for r in rows if r[1] == "failed")
    assert len({r[3] for r in rows}) == 4, "isolation: process gives every trial its own worker"
    for (_, _, _, _, _, end), (_, _, _, _, start, _) in zip(rows, rows[1:], strict=False):
        assert end <= start, "trials on a CPU-only node must not overlap"

    # Timing truth: each phase's median is its sleep, within 1 ms + 3%.
    measured = q(
        store,
        "select s.trial_id, s.phase, s.duration_ms from steps s join trials t using (sweep_id, trial_id) "
        "where t.status = 'ok' and not s.is_warmup",
    )
    for trial_id in {r[0] for r in measured}:
        for phase, want in PHASE_MS.items():
            got = statistics.median(r[2] for r in measured if r[0] == trial_id and r[1] == phase)
            assert abs(got - want) <= 1.0 + 0.03 * want, (phase, got, want)

    # The same answer through the named query.
    out = stepscope("query", "phase_breakdown", "--store", "results", "--format", "csv", check_rc=0)
    assert "backward" in out.stdout and "e2e-" in out.stdout


def test_worker_killed_mid_trial_is_retried_without_partial_or_duplicate_rows(write_spec, stepscope, tmp_path):
    """Also: a custom workload module in the current directory (not beside the spec) is found."""
    marker = tmp_path / "killed-once"
    write_spec("", name="unused.yaml", with_modules=("sleepy",))  # sleepy.py lands in the cwd
    (tmp_path / "specs").mkdir()
    spec = write_spec(
        f"""
        name: killed
        isolation: reuse
        fixed: {{workload: "sleepy:build", iterations: 3, warmup: 1, forward_ms: 5}}
        grid:
          die_marker: ["{marker}", ""]
        """,
        name="specs/killed.yaml",
    )
    proc = stepscope("run", spec, "--store", "results", check_rc=0)
    assert "retrying" in proc.stderr and "attempt 2" in proc.stderr
    assert marker.exists()
    rows = q(tmp_path / "results", "select trial_id, status, attempt from trials order by trial_index")
    assert [(r[1], r[2]) for r in rows] == [("ok", 2), ("ok", 1)]
    files = [p.name for p in (tmp_path / "results").rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith(".tmp")]
    assert q(tmp_path / "results", "select count(*), count(distinct trial_id) from trials") == [(2, 2)]
    per_trial = q(tmp_path / "results", "select trial_id, count(*) from steps group by all")
    assert sorted(n for _, n in per_trial) == [4 * 6, 4 * 6]


def test_interrupted_sweep_resumes_only_missing_trials(write_spec, stepscope, tmp_path):
    """Also: a custom workload module found through PYTHONPATH, by every worker."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "slowpkg.py").write_text((FIXTURES / "sleepy.py").read_text())
    spec = write_spec(
        """
        name: resumable
        isolation: reuse
        fixed: {workload: "slowpkg:build", iterations: 6, warmup: 0, forward_ms: 150}
        grid:
          seed: [0, 1, 2, 3, 4]
        """,
    )
    store = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "STEPSCOPE_STORE")}
    env["PYTHONPATH"] = str(lib)
    proc = subprocess.Popen(
        [*STEPSCOPE, "run", spec, "--store", str(store)], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    trials_dir = store / "trials"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(trials_dir.rglob("*.parquet"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err[-2000:])
    assert "Resume with: stepscope run" in err and "--resume" in err
    before = dict(q(store, "select trial_id, started_at from trials"))
    assert 2 <= len(before) < 5

    resumed = stepscope("run", spec, "--store", "results", "--resume", check_rc=0, env={"PYTHONPATH": str(lib)})
    assert f"{len(before)} already stored" in resumed.stdout
    after = q(store, "select trial_id, started_at, sweep_id from trials")
    assert len(after) == 5 and len({r[0] for r in after}) == 5, "no trial's rows twice"
    assert len({r[2] for r in after}) == 1, "resume continues the same sweep"
    for trial_id, started_at, _ in after:
        if trial_id in before:
            assert started_at == before[trial_id], "a stored trial must not run again"
    assert q(store, "select count(*) from sweeps") == [(1,)]
    dupes = q(store, "select trial_id, iteration, phase, count(*) from steps group by all having count(*) > 1")
    assert dupes == []


def test_trial_command_writes_the_same_rows_as_run(write_spec, stepscope, tmp_path):
    spec = write_spec(
        """
        name: same
        isolation: reuse
        fixed: {workload: mlp, depth: 1, width: 16, input_dim: 8, iterations: 3, warmup: 1}
        grid:
          batch_size: [4, 8]
        """
    )
    stepscope("run", spec, "--store", "via-run", check_rc=0)
    for i in (0, 1):
        out = stepscope("trial", spec, "--index", str(i), "--store", "via-trial", check_rc=0)
        assert out.stdout.startswith("ok: ")
    cols = "trial_id, trial_index, status, workload, batch_size, precision, params, device_kind, device_name, host, param_count, final_loss, measured_steps"
    a = q(tmp_path / "via-run", f"select {cols} from trials order by trial_index")
    b = q(tmp_path / "via-trial", f"select {cols} from trials order by trial_index")
    assert a == b and len(a) == 2
    keys = "trial_id, iteration, is_warmup, phase, phase_index"
    assert q(tmp_path / "via-run", f"select {keys} from steps order by all") == q(
        tmp_path / "via-trial", f"select {keys} from steps order by all"
    )
    run_node = q(tmp_path / "via-run", "select distinct node_id is not null from trials")
    assert run_node == [(True,)]
    # The two stores hold files of identical schemas.
    for table in ("sweeps", "trials", "steps"):
        sa = duckdb.sql(f"describe select * from read_parquet('{tmp_path}/via-run/{table}/*/*.parquet')").fetchall()
        sb = duckdb.sql(f"describe select * from read_parquet('{tmp_path}/via-trial/{table}/*/*.parquet')").fetchall()
        assert sa == sb


def test_readme_demo_quickstart(stepscope, tmp_path):
    """The README's main job: the quickstart sweep on an embedded Ray, then its phase breakdown."""
    spec = str(Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml")
    run = stepscope("run", spec, check_rc=0, timeout=600)
    assert "12 trials run (12 ok)" in run.stdout
    assert run.stderr.count("] ok ") == 12
    out = stepscope("query", "phase_breakdown", "--format", "csv", check_rc=0)
    rows = out.stdout.splitlines()[1:]
    assert len(rows) == 12 * 6
    shares = stepscope("query", "phase_shares", "--format", "json", check_rc=0)
    configs = json.loads(shares.stdout)
    assert len(configs) == 12
    for c in configs:
        total = sum(c[f"{p}_pct"] for p in ("data", "to_device", "forward", "loss", "backward", "optimizer"))
        assert total == pytest.approx(100, abs=0.5) and c["phases_ms"] > 0
        assert 0 < c["step_ms_p10"] <= c["step_ms_p50"] <= c["step_ms_p90"]
    # compare on the quickstart store: fp32 against bf16 for each of the 6 configurations.
    out = stepscope("compare", "--by", "precision", "--format", "json", check_rc=0)
    document = json.loads(out.stdout)
    assert document["baseline"] == "bf16" and document["values"] == ["bf16", "fp32"]
    steps = {(r["workload"], r["batch_size"]): r for r in document["rows"] if r["metric"] == "step_ms"}
    assert len(steps) == 6 and all(r["unit"] == "step blocks" for r in steps.values())
    # Each value again, from the Parquet files with pyarrow and a plain loop: the steps'
    # totals, medians of blocks of ceil(cbrt(10)) = 3 steps (the last takes the 10th), their median.
    import pyarrow.dataset as ds

    trials = ds.dataset(str(tmp_path / "stepscope-results" / "trials"), format="parquet").to_table(
        columns=["trial_id", "workload", "batch_size", "precision"]).to_pylist()
    phases = ds.dataset(str(tmp_path / "stepscope-results" / "steps"), format="parquet").to_table(
        columns=["trial_id", "iteration", "is_warmup", "duration_ms"]).to_pylist()
    totals: dict[str, dict[int, float]] = {}
    for p in phases:
        if not p["is_warmup"]:
            totals.setdefault(p["trial_id"], {}).setdefault(p["iteration"], 0.0)
            totals[p["trial_id"]][p["iteration"]] += p["duration_ms"]
    for t in trials:
        step = [totals[t["trial_id"]][i] for i in sorted(totals[t["trial_id"]])]
        assert len(step) == 10
        blocks = [statistics.median(step[0:3]), statistics.median(step[3:6]), statistics.median(step[6:10])]
        row = steps[(t["workload"], t["batch_size"])]
        figure = row["baseline_value"] if t["precision"] == "bf16" else row["other_value"]
        assert figure == pytest.approx(statistics.median(blocks), rel=1e-12)
    for row in steps.values():
        assert row["ratio"] == pytest.approx(row["other_value"] / row["baseline_value"], rel=1e-12)
        assert row["ci_low"] <= row["ci_high"] and row["n_baseline"] == row["n_other"] == 3
        if row["verdict"] == "slower":
            assert row["ratio"] > 1.05 and row["p_value"] < 0.05 and row["ci_low"] > 1
        elif row["verdict"] == "same":
            assert 1 / 1.05 <= row["ratio"] <= 1.05
        else:
            assert row["verdict"] in ("faster", "unsure")
    # The report of the quickstart store: one file, nothing fetched, every configuration drawn.
    report = stepscope("report", "--out", "report.html", check_rc=0)
    assert "report.html" in report.stdout
    page = (tmp_path / "report.html").read_text()
    assert "<script" not in page and "src=\"http" not in page and "href=\"http" not in page
    for workload in ("mlp", "resnet", "gpt"):
        assert f"{workload} bs=16" in page and f"{workload} bs=64" in page
