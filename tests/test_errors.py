"""One base class for the user's errors, and one way to put an exception on one line."""

from __future__ import annotations

import importlib
import pickle

import pytest

from stepscope import StepscopeError
from stepscope.errors import Field, one_line

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


STORE = Field("store")


def flag(field: Field) -> str:
    return f"--{field.name}"


def test_a_message_names_its_fields_by_the_library_names_and_a_front_end_spells_them():
    err = StepscopeError(STORE, ": empty; give a directory (or leave ", STORE, " out)")
    assert str(err) == "store: empty; give a directory (or leave store out)"
    assert err.render(flag) == "--store: empty; give a directory (or leave --store out)"
    assert err.field == "store" and StepscopeError("no field here").field is None
    # A wrapper keeps the fields of what it wraps; text around them is never read.
    wrapped = StepscopeError("query q: ", err, "; store --store")
    assert wrapped.render(flag) == "query q: --store: empty; give a directory (or leave --store out); store --store"
    assert wrapped.field == "store"
    assert one_line(wrapped, with_type=False, spell=flag) == wrapped.render(flag)
    assert one_line(wrapped, with_type=False) == str(wrapped)


def test_fields_survive_pickling_as_an_error_raised_in_a_ray_task_does():
    from stepscope.storage.store import StoreError

    back = pickle.loads(pickle.dumps(StoreError(STORE, " /x: cannot write /x/steps")))
    assert type(back) is StoreError and back.field == "store"
    assert (str(back), back.render(flag)) == ("store /x: cannot write /x/steps", "--store /x: cannot write /x/steps")
