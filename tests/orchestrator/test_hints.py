"""The commands stepscope prints for the user to paste are shell-quoted (a store path with
spaces, an S3 URI with `&`), and the summary says "results in" only when there are results."""

from __future__ import annotations

import shlex

from stepscope.orchestrator.commands.run import summary
from stepscope.orchestrator.grid import expand
from stepscope.orchestrator.scheduler import SweepOutcome, TrialOutcome
from stepscope.orchestrator.spec import load_spec
from stepscope.storage.schema import TrialStatus
from stepscope.storage.store import Store

SPEC = "name: h\nfixed: {iterations: 1, warmup: 0}\ngrid: {workload: [mlp], batch_size: [1, 2]}\n"
ODD = "my results & more; $(x)"


def hint(out: str, lead: str) -> list[str]:
    line = next(ln for ln in out.splitlines() if lead in ln)
    return shlex.split(line.split(lead, 1)[1])


def outcome_of(spec_path: str, *statuses: str) -> SweepOutcome:
    trials = expand(load_spec(spec_path), None)
    outcome = SweepOutcome("h-1", total=len(statuses))
    for trial, status in zip(trials, statuses, strict=False):
        error = None if status == "ok" else "StoreError: --store x: cannot write y"
        outcome.outcomes.append(TrialOutcome(trial, TrialStatus(status), error, None, 1.0, 1))
    return outcome


def test_the_query_hint_pastes_back_to_the_same_store(write_spec, tmp_path, capsys):
    store = str(tmp_path / ODD)
    summary(outcome_of(write_spec(SPEC), "ok", "failed"), Store(store))
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith(f"results in {store}; try: ")
    assert hint(out, "; try: ") == ["stepscope", "query", "phase_shares", "--store", store]
    uri = "s3://b/r?endpoint_override=127.0.0.1:9000&scheme=http"
    summary(outcome_of(write_spec(SPEC), "ok"), Store(uri))
    assert hint(capsys.readouterr().out, "; try: ") == ["stepscope", "query", "phase_shares", "--store", uri]


def test_no_results_in_when_every_trial_failed(write_spec, tmp_path, capsys):
    store = str(tmp_path / ODD)
    summary(outcome_of(write_spec(SPEC), "failed", "failed"), Store(store))
    out = capsys.readouterr().out
    assert "results in" not in out
    assert "no trial stored a result; see why with: " in out
    assert hint(out, "see why with: ") == ["stepscope", "query", "trials", "--store", store]


class _InterruptedSession:
    """A Session that the user interrupts (Ctrl-C) as it starts."""

    def __init__(self, address) -> None:
        pass

    def __enter__(self):
        raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        return None


def test_the_resume_hint_pastes_back_to_the_same_command(cli_runner, write_spec, tmp_path, monkeypatch):
    from stepscope.orchestrator import scheduler

    monkeypatch.setattr(scheduler, "Session", _InterruptedSession)
    spec = write_spec(SPEC, name="my spec & co.yaml")
    store = str(tmp_path / ODD)
    result = cli_runner("run", spec, "--store", store)
    assert result.exit_code == 130
    assert hint(result.stderr, "Resume with: ") == ["stepscope", "run", spec, "--resume", "--store", store]
