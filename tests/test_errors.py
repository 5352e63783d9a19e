"""One base class for the user's errors, and one way to put an exception on one line."""

from __future__ import annotations

import importlib

import pytest

from stepscope import StepscopeError
from stepscope.errors import one_line

USER_ERRORS = [
    ("stepscope.orchestrator.spec", "SpecError"),
    ("stepscope.workloads.params", "ParamError"),
    ("stepscope.storage.store", "StoreError"),
    ("stepscope.analysis.queries", "QueryError"),
    ("stepscope.orchestrator.scheduler", "SchedulerError"),
    ("stepscope.orchestrator.jobs", "JobError"),
    ("stepscope.workloads.measure.device", "DeviceError"),
    ("stepscope.workloads.measure.flop_peaks", "PeakError"),
]


@pytest.mark.parametrize(("module", "name"), USER_ERRORS)
def test_every_user_error_is_a_stepscope_error(module, name):
    assert issubclass(getattr(importlib.import_module(module), name), StepscopeError)


def test_the_cli_turns_any_stepscope_error_into_one_line_and_exit_2(cli_runner, tmp_path):
    # A QueryError (DuckDB's message spans lines: LINE 1 and a caret) becomes one line.
    result = cli_runner("sql", "select nope from trials", "--store", str(tmp_path / "s"))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: Binder Error:"), result.output


def test_one_line_is_the_first_non_blank_line_with_the_type():
    assert one_line(ValueError("\n  bad   value \nLINE 1: select\n     ^")) == "ValueError: bad value"
    assert one_line(ValueError("")) == "ValueError"
    assert one_line(KeyError("k"), with_type=False) == "'k'"
    assert one_line(RuntimeError("x" * 5000), limit=10) == "RuntimeErr"


def test_one_line_describes_a_wrapper_by_what_it_wraps():
    class TaskError(Exception):  # the shape of Ray's RayTaskError: a remote traceback, and .cause
        def __init__(self, cause):
            super().__init__("ray::task() (pid=1)\n  File 'x.py', line 3\nZeroDivisionError: division by zero")
            self.cause = cause

    assert one_line(TaskError(ZeroDivisionError("division by zero"))) == "ZeroDivisionError: division by zero"
