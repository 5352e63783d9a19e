"""What a sweep prints while it runs: aligned lines, an honest bar, an ETA per GPU type,
no notice from Ray on every run, and help texts whose examples stay one per line."""

from __future__ import annotations

import inspect
import logging
import re
import time
import types
from collections import deque

import click
import pytest
from click.testing import CliRunner

from stepscope.orchestrator import ray_session, scheduler
from stepscope.orchestrator.cli import cli
from stepscope.orchestrator.progress import PrintProgress
from stepscope.orchestrator.scheduler import Snapshot, SweepOutcome, TrialOutcome, _Running
from stepscope.orchestrator.spec import load_spec
from stepscope.storage.schema import TrialStatus
from stepscope.workloads.registry import resolve_params
from stepscope.workloads.trial import Trial


def trial(i: int, gpu: str | None, batch: int = 16) -> Trial:
    return Trial(index=i, trial_id=f"t{i}", repeat=0, gpu=gpu,
                 params=resolve_params({"workload": "mlp", "batch_size": batch}))


def test_trial_lines_keep_one_column_with_long_gpu_labels(write_spec, capsys):
    spec = load_spec(write_spec("name: x\ngrid: {workload: [mlp]}\n"))
    trials = [trial(0, "A100"), trial(1, "A100-SXM4-80GB-with-a-long-name", batch=1024)]
    progress = PrintProgress(spec, trials)
    for i, t in enumerate(trials):
        done = TrialOutcome(t, TrialStatus.OK, None, 1234.5, 2.0, 1)
        progress.trial_done(done, Snapshot(i + 1, 2, {}, 0, 1.0, None))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and len({line.index("samples/s") for line in lines}) == 1, lines


def test_the_bar_says_starting_between_trials_and_none_only_at_the_end(write_spec, capsys):
    progress = PrintProgress(load_spec(write_spec("name: x\ngrid: {workload: [mlp]}\n")))
    progress.tty = True
    progress.tick(Snapshot(1, 3, {}, 0, 1.0, 2.0), force=True)
    assert "running: starting" in capsys.readouterr().err
    progress.tick(Snapshot(3, 3, {}, 0, 1.0, 0.0), force=True)
    assert "running: none" in capsys.readouterr().err


def test_eta_is_per_gpu_type_from_its_own_finished_trials(monkeypatch):
    """A100 trials take 10 s and two run side by side; H100 trials take 2 s, one slot.
    Left: 4 A100 trials queued and one started 4 s ago (6 s left) = 46 s over 2 slots =
    23 s; 3 H100 trials = 6 s. The sweep ends with the slower type: 23 s (the old
    estimate, elapsed / finished * left, knew nothing of types)."""
    fake_ray = types.SimpleNamespace(remote=lambda **kw: (lambda f: f))
    outcome = SweepOutcome("s", total=10)
    driver = scheduler._Driver(fake_ray, types.SimpleNamespace(isolation=None), None, "s", None, outcome, None, [])
    outcome.outcomes += [TrialOutcome(trial(0, "A100"), TrialStatus.OK, None, 1.0, 10.0, 1),
                         TrialOutcome(trial(1, "H100"), TrialStatus.OK, None, 1.0, 2.0, 1)]
    driver.queues = {"A100": deque((trial(i, "A100"), 1) for i in range(2, 6)),
                     "H100": deque((trial(i, "H100"), 1) for i in range(6, 9))}
    driver.running = {"ref": _Running(trial(9, "A100"), 1, time.monotonic() - 4.0)}
    monkeypatch.setattr(driver, "slots", lambda gpu: {"A100": 2, "H100": 1}[gpu])
    assert driver.eta() == pytest.approx(23.0, abs=0.1)


def test_ray_s_token_auth_enabled_notice_is_dropped_and_its_warning_kept(caplog):
    logger = logging.getLogger(ray_session._AUTH_LOGGER)
    with caplog.at_level(logging.WARNING, logger=ray_session._AUTH_LOGGER), ray_session._without_token_auth_notice():
        logger.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled")
        logger.warning("Token authentication is disabled for this Ray cluster. Anyone with network access")
    assert [r.getMessage()[:40] for r in caplog.records] == ["Token authentication is disabled for thi"]


def commands(group: click.Command, prefix: tuple[str, ...] = ()):
    yield prefix, group
    for name, sub in getattr(group, "commands", {}).items():
        yield from commands(sub, (*prefix, name))


@pytest.mark.parametrize("path", [p for p, c in commands(cli) if c.help and "Example:" in c.help],
                         ids=lambda p: " ".join(p) or "stepscope")
def test_help_keeps_each_example_on_its_own_line(path):
    command = cli
    for name in path:
        command = command.commands[name]
    examples = inspect.cleandoc(command.help).split("Example:", 1)[1]
    wanted = [line.strip() for line in examples.splitlines() if line.strip() and line.strip() != "\b"]
    shown = CliRunner().invoke(cli, [*path, "--help"]).output
    shown_lines = {re.sub(r"\s+", " ", line.strip()) for line in shown.splitlines()}
    for line in wanted:
        assert re.sub(r"\s+", " ", line) in shown_lines, (path, line, shown)


def test_a_ray_client_server_that_missed_its_start_deadline_is_tried_again(monkeypatch):
    """Ray Client's proxy may fail to start the per-client server in time on a loaded head
    ("Initialization failure from server"); the next try usually succeeds. Other errors,
    and other addresses, are not retried."""
    calls = []

    def init(address, **options):
        calls.append(address)
        if len(calls) < 3:
            raise ConnectionAbortedError("Initialization failure from server:\n")

    monkeypatch.setattr(ray_session, "CLIENT_INIT_PAUSE_S", 0.0)
    ray_session._init_with_retries(types.SimpleNamespace(init=init), "ray://head:10001", {})
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(ConnectionAbortedError):
        ray_session._init_with_retries(types.SimpleNamespace(init=init), "head:6379", {})
    assert len(calls) == 1
