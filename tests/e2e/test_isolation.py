"""`isolation: process` for real: every trial in an OS process that ran no other trial,
forked from a server that has torch imported; `reuse` runs trials in the worker itself.
Through `stepscope run` on an embedded Ray, with a workload that leaves state behind
(tests/fixtures/leaky.py)."""

from __future__ import annotations

import json
import os

import pytest

from stepscope.analysis.warehouse import connect

pytestmark = pytest.mark.slow


def q(store, sql):
    return connect(str(store)).execute(sql).fetchall()


def seen(record_dir) -> dict[str, dict]:
    """What each trial of tests/fixtures/leaky.py recorded, by tag (its seed unless given)."""
    records = [json.loads(p.read_text()) for p in record_dir.glob("*.json")]
    return {r["tag"]: r for r in records}


def leaky_spec(write_spec, record_dir, isolation: str, extra: str = "") -> str:
    return write_spec(
        f"""
        name: leaky-{isolation}
        isolation: {isolation}
        fixed: {{workload: "leaky:build", batch_size: 2, iterations: 2, warmup: 0, count_flops: false,
                record_dir: "{record_dir}"{extra}}}
        grid:
          seed: [0, 1, 2]
        """,
        with_modules=("leaky",),
    )


def test_process_isolation_gives_each_trial_a_clean_process(write_spec, stepscope, tmp_path):
    record = tmp_path / "seen"
    record.mkdir()
    stepscope("run", leaky_spec(write_spec, record, "process"), "--store", "results", check_rc=0)
    got = seen(record)
    rows = dict(q(tmp_path / "results", "select seed::varchar, pid from trials"))
    assert sorted(got) == ["0", "1", "2"]
    assert len({s["pid"] for s in got.values()}) == 3, "a process per trial"
    for seed, s in got.items():
        assert s["pid"] == rows[seed], "the row's pid is the trial's own process"
        assert (s["builds_before"], s["cudnn_benchmark"], s["leaked_env"]) == (0, False, None), s
        # The thread count Ray gives the task (OMP_NUM_THREADS: the node's CPUs here), as in a new process.
        assert s["omp_num_threads"] == str(os.cpu_count()) and s["torch_threads"] == os.cpu_count(), s


def test_reuse_runs_trials_in_one_process_so_state_carries_over(write_spec, stepscope, tmp_path):
    """The control for the test above: the workload does leave state behind."""
    record = tmp_path / "seen"
    record.mkdir()
    stepscope("run", leaky_spec(write_spec, record, "reuse"), "--store", "results", check_rc=0)
    got = seen(record)
    assert len({s["pid"] for s in got.values()}) == 1
    order = sorted(got.values(), key=lambda s: s["builds_before"])
    assert [s["builds_before"] for s in order] == [0, 1, 2]
    assert [s["cudnn_benchmark"] for s in order] == [False, True, True]
    assert order[0]["leaked_env"] is None and order[1]["leaked_env"] is not None


def test_a_trial_process_that_dies_is_retried_like_a_dead_worker(write_spec, stepscope, tmp_path):
    """sleepy's die_marker SIGKILLs the trial's process (not the worker) on the first attempt."""
    marker = tmp_path / "killed-once"
    spec = write_spec(
        f"""
        name: killed
        fixed: {{workload: "sleepy:build", iterations: 3, warmup: 1, forward_ms: 5, count_flops: false}}
        grid:
          die_marker: ["{marker}", ""]
        """,
        with_modules=("sleepy",),
    )
    proc = stepscope("run", spec, "--store", "results", check_rc=0)
    assert "retrying" in proc.stderr and "attempt 2" in proc.stderr and "killed by SIGKILL" in proc.stderr
    rows = q(tmp_path / "results", "select status, attempt, pid from trials order by trial_index")
    assert [(r[0], r[1]) for r in rows] == [("ok", 2), ("ok", 1)]
    assert int(marker.read_text()) not in {r[2] for r in rows}, "the retry ran in a new process"
    assert not [p for p in (tmp_path / "results").rglob("*") if p.name.endswith(".tmp")]
    assert q(tmp_path / "results", "select count(*), count(distinct trial_id) from trials") == [(2, 2)]


def test_a_timed_out_trial_process_is_killed_with_its_worker(write_spec, stepscope, tmp_path):
    """--trial-timeout kills the worker (ray.cancel force=True); the trial's process must go
    with it, or it would write its rows over the driver's `timeout` row later."""
    record = tmp_path / "seen"
    record.mkdir()
    spec = write_spec(
        f"""
        name: hangs
        fixed: {{workload: "leaky:build", batch_size: 2, iterations: 1, warmup: 0, count_flops: false,
                record_dir: "{record}"}}
        grid:
          tag: [hangs, next]
          hang_s: [120, 0]
        exclude:
          - {{tag: hangs, hang_s: 0}}
          - {{tag: next, hang_s: 120}}
        """,
        with_modules=("leaky",),
    )
    stepscope("run", spec, "--store", "results", "--trial-timeout", "12", check_rc=1)
    rows = q(tmp_path / "results", "select status, pid from trials order by trial_index")
    got = seen(record)
    assert [r[0] for r in rows] == ["timeout", "ok"] and rows[1][1] == got["next"]["pid"]
    # One trial at a time here, so the next trial started once the first was cancelled.
    assert got["next"]["others_alive"] == {"hangs": False}
