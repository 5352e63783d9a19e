"""The per-step measurers' protocol: when the loop calls each hook, and that a new measurer is
one class plus one line in the loop's `Measurers(...)` (here: added by a stand-in)."""

from __future__ import annotations

import contextlib

import pytest

from stepscope.storage.schema import PHASES
from stepscope.workloads.measure import measurers, runner
from stepscope.workloads.measure.measurers import (
    BACKWARD,
    BOUNDARIES,
    DATA,
    END,
    FORWARD,
    LOSS,
    OPTIMIZER,
    TO_DEVICE,
    Measurers,
    StepMeasurer,
)
from stepscope.workloads.registry import resolve_params
from stepscope.workloads.trial import Trial


def test_boundaries_are_named_after_the_phase_that_starts_there():
    assert [DATA, TO_DEVICE, FORWARD, LOSS, BACKWARD, OPTIMIZER] == [BOUNDARIES[p] for p in PHASES]
    assert list(BOUNDARIES.values()) == list(range(len(PHASES))) and END == len(PHASES)


class Recorder(StepMeasurer):
    """Writes down every call, and which hooks ran inside its forward context."""

    def __init__(self, calls: list) -> None:
        self.calls = calls

    def start_step(self, step):
        self.calls.append(("start_step", step))

    def forward_context(self, step):
        @contextlib.contextmanager
        def inside():
            self.calls.append(("enter", step))
            yield
            self.calls.append(("exit", step))

        return inside()

    def boundary(self, index):
        self.calls.append(("boundary", index))

    def end_step(self, step, loss):
        assert not loss.requires_grad  # detached: it keeps no graph alive
        self.calls.append(("end_step", step))

    def finish(self, completed):
        self.calls.append(("finish", completed))


class OnlyEnds(StepMeasurer):
    def __init__(self, calls):
        self.calls = calls

    def end_step(self, step, loss):
        self.calls.append(("only_ends", step))


def test_each_hook_goes_to_the_measurers_that_define_it_in_order():
    calls = []
    group = Measurers(OnlyEnds(calls), Recorder(calls))
    group.end_step(3, _Loss())
    assert calls == [("only_ends", 3), ("end_step", 3)]
    assert group.forward_context(0) is not None
    assert Measurers(OnlyEnds(calls)).forward_context(0) is measurers._NO_CONTEXT


def test_the_one_measurer_with_boundary_work_is_called_by_the_timer_directly():
    one = Recorder([])
    assert Measurers(OnlyEnds([]), one).boundary == one.boundary
    calls = []
    two = Measurers(Recorder(calls), Recorder(calls))
    two.boundary(2)
    assert calls == [("boundary", 2), ("boundary", 2)]


def _trial(**params) -> Trial:
    params = {"workload": "mlp", "depth": 1, "width": 8, "input_dim": 8, "batch_size": 4, "count_flops": False,
              **params}
    return Trial(index=0, trial_id="t0", repeat=0, gpu=None, params=resolve_params(params))


@pytest.fixture
def recorded(monkeypatch):
    """The loop's measurers plus a Recorder: what one more line in `Measurers(...)` does."""
    calls = []

    def with_recorder(*given):
        return Measurers(*given, Recorder(calls))

    monkeypatch.setattr(runner, "Measurers", with_recorder)
    return calls


def test_a_new_measurer_sees_every_step_at_every_boundary(recorded):
    row = runner.run_trial(_trial(iterations=2, warmup=1), "s", None)
    assert row["status"] == "ok" and row["activation_bytes"] > 0  # the built-in measurers still ran
    step = [("boundary", DATA), ("boundary", TO_DEVICE), ("boundary", FORWARD), ("boundary", LOSS),
            ("boundary", BACKWARD), ("boundary", OPTIMIZER), ("boundary", END)]
    want = []
    for i in range(3):
        # forward and loss run in the context: entered after FORWARD's boundary, left before BACKWARD's
        inner = [*step[:3], ("enter", i), step[3], ("exit", i), *step[4:]]
        want += [("start_step", i), *inner, ("end_step", i)]
    assert recorded == [*want, ("finish", True)]


def test_a_failed_loop_still_finishes_every_measurer(recorded, monkeypatch):
    def failing_end_step(self):
        raise RuntimeError("the device went away")

    monkeypatch.setattr("stepscope.workloads.measure.timing.CpuPhaseTimer.end_step", failing_end_step)
    row = runner.run_trial(_trial(iterations=2, warmup=1), "s", None)
    assert row["status"] == "failed" and "the device went away" in row["error"]
    assert recorded[-1] == ("finish", False) and row["activation_bytes"] is None
    assert row["measured_steps"] == 0


class _Loss:
    requires_grad = False
