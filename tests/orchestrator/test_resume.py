"""How a sweep counts a trial's status: what `--resume` reruns, the exit code, the summary."""

from __future__ import annotations

from stepscope.orchestrator.commands.run import summary
from stepscope.orchestrator.grid import expand
from stepscope.orchestrator.resume import pick_sweep
from stepscope.orchestrator.scheduler import SweepOutcome, TrialOutcome, sweep_row
from stepscope.orchestrator.spec import load_spec
from stepscope.storage.schema import TrialStatus
from stepscope.storage.store import Store
from stepscope.workloads.measure.runner import failed_row

SPEC = "name: r\nfixed: {iterations: 1, warmup: 0}\ngrid: {workload: [mlp], batch_size: [1, 2, 3, 4, 5]}\n"
STATUSES = ("ok", "oom", "failed", "timeout", "nonfinite")


def test_resume_reruns_a_nonfinite_trial_as_it_does_a_failed_one(write_spec, tmp_path):
    spec = load_spec(write_spec(SPEC))
    trials = expand(spec, None)
    store = Store(str(tmp_path / "s"))
    store.write_sweep(sweep_row(spec, "r-1", len(trials), None))
    for trial, status in zip(trials, STATUSES, strict=True):
        store.write_trial("r-1", trial.trial_id, failed_row(trial, "r-1", "x", 1, status=TrialStatus(status)), [])
    chosen = pick_sweep(store, spec, sweep_id=None, resume=True)
    assert chosen.sweep_id == "r-1"
    assert chosen.done_ids == {trials[0].trial_id, trials[1].trial_id}  # ok and oom only


def test_a_nonfinite_trial_fails_the_sweep_and_is_listed_in_the_summary(write_spec, tmp_path, capsys):
    spec = load_spec(write_spec(SPEC))
    trials = expand(spec, None)
    outcome = SweepOutcome("r-1", total=2)
    outcome.outcomes.append(TrialOutcome(trials[0], TrialStatus.OK, None, 10.0, 1.0, 1))
    assert outcome.all_results  # exit code 0
    error = "loss became nan at iteration 3 (measured step 1)"
    outcome.outcomes.append(TrialOutcome(trials[1], TrialStatus.NONFINITE, error, 10.0, 1.0, 1))
    assert not outcome.all_results  # exit code 1
    summary(outcome, Store(str(tmp_path / "s")))
    out = capsys.readouterr().out
    assert "r-1: 2 trials run (1 ok, 1 nonfinite)" in out
    assert f"  nonfinite: {trials[1].label} [{trials[1].trial_id}]: {error}" in out


def test_resume_reads_a_trials_latest_attempt_as_the_views_do(write_spec, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stepscope.storage.schema import TRIALS

    spec = load_spec(write_spec(SPEC))
    trials = expand(spec, None)
    store = Store(str(tmp_path / "s"))
    store.write_sweep(sweep_row(spec, "r-1", len(trials), None))
    for trial, (first, second) in zip(trials[:2], [("ok", "failed"), ("failed", "ok")], strict=True):
        rows = [failed_row(trial, "r-1", "x", attempt, status=TrialStatus(status))
                for attempt, status in ((2, second), (1, first))]  # the later attempt first in the file
        store.write_trial("r-1", trial.trial_id, rows[0], [])
        pq.write_table(pa.Table.from_pylist(rows, schema=TRIALS), f"{tmp_path}/s/trials/sweep_id=r-1/{trial.trial_id}.parquet")
    chosen = pick_sweep(store, spec, sweep_id=None, resume=True)
    assert chosen.done_ids == {trials[1].trial_id}  # attempt 2 ended ok; the other's attempt 2 failed
