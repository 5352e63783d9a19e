"""A `torch.compile`d model: the FLOP-counting pass counts its eager math and leaves
dynamo as it found it, so every timed step of the trial runs the compiled graph.

The witness is a dynamo backend of our own (tests/fixtures/compiled.py) that
counts compiles and calls of the compiled graph: over a trial there must be one
compile, before the first warmup step's call, and warmup + iterations calls,
with FLOP counting on as with it off. Dynamo's caches are process-wide, so each
test starts and ends with `torch._dynamo.reset()` (the tests' doing, never the
counter's).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from stepscope.workloads.measure import flops
from stepscope.workloads.measure.flops import FlopCountError, count_step_flops
from stepscope.workloads.measure.runner import run_trial
from stepscope.workloads.registry import resolve_params
from stepscope.workloads.trial import Trial

FIXTURES = Path(__file__).parents[2] / "fixtures"
sys.path.insert(0, str(FIXTURES))
import compiled  # noqa: E402

pytestmark = [
    # torch.compile(module) warns while the counter's module tracker holds global hooks.
    pytest.mark.filterwarnings("ignore:Using `torch.compile\\(module\\)` when there are global hooks:UserWarning"),
]

HOW = ["whole", "submodule", "inplace", "function"]
WARMUP, ITERATIONS, BATCH = 2, 3, 4
# compiled.build's MLP: Linear(16, 32), Linear(32, 32), Linear(32, 10); 2 FLOPs per multiply-add.
FORWARD = 2 * BATCH * (16 * 32 + 32 * 32 + 32 * 10)


@pytest.fixture(autouse=True)
def fresh_dynamo(tmp_path, monkeypatch):
    monkeypatch.setenv("STEPSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    torch._dynamo.reset()
    compiled.reset()
    yield
    torch._dynamo.reset()
    compiled.reset()


def _trial(how: str, count_flops: bool) -> dict:
    params = resolve_params({"workload": "compiled:build", "compile": how, "count_flops": count_flops,
                             "batch_size": BATCH, "warmup": WARMUP, "iterations": ITERATIONS})
    trial = Trial(index=0, trial_id="t0", repeat=0, gpu=None, params=params)
    return run_trial(trial, "s", None, search_paths=[str(FIXTURES)])


def _ran_compiled_every_step(row: dict) -> None:
    assert row["status"] == "ok", row["error"]
    # One compile, of the model, on real tensors, before the first call: in warmup step 0.
    assert [(c["ours"], c["meta_inputs"], c["calls_before"]) for c in compiled.COMPILES] == [(True, False, 0)]
    # The compiled graph ran in every step, warmup and timed: no step fell back to eager.
    assert compiled.CALLS == [{"meta_inputs": False, "ours": True}] * (WARMUP + ITERATIONS)


@pytest.mark.parametrize("count_flops", [True, False], ids=["counting", "not-counting"])
@pytest.mark.parametrize("how", HOW)
def test_every_step_of_a_compiled_model_runs_compiled(how: str, count_flops: bool) -> None:
    row = _trial(how, count_flops)
    _ran_compiled_every_step(row)
    assert row["flops_forward"] == (FORWARD if count_flops else None)


@pytest.mark.parametrize("how", HOW)
def test_a_compiled_model_is_counted_as_its_eager_math(how: str) -> None:
    count = count_step_flops(compiled.build, {"batch_size": BATCH, "compile": how})
    eager = count_step_flops(compiled.build, {"batch_size": BATCH, "compile": "none"})
    assert (count.forward, count.backward) == (eager.forward, eager.backward)
    assert count.forward == FORWARD and count.device_used == "meta"
    assert compiled.COMPILES == [] and compiled.CALLS == []  # dynamo never looked


def test_counting_between_steps_leaves_the_compiled_graph_in_use() -> None:
    """A model compiled and run before the count: the count neither recompiles it nor
    makes dynamo skip it afterwards."""
    work = compiled.build({"batch_size": BATCH})
    inputs, targets = work.make_batch()

    def step() -> None:
        work.loss_fn(work.model(inputs), targets).backward()

    step()
    assert (len(compiled.COMPILES), len(compiled.CALLS)) == (1, 1)
    count_step_flops(compiled.build, {"batch_size": BATCH})
    step()
    step()
    assert (len(compiled.COMPILES), len(compiled.CALLS)) == (1, 3)


def _count_under_dynamo(monkeypatch) -> None:
    """The counter as it was: dynamo left in the way, no compiled model refused."""
    monkeypatch.setattr(flops, "_HAS_STANCE", False)
    monkeypatch.setattr(flops, "_refuse_compiled", lambda model: None)


def test_the_witness_sees_the_fault_of_counting_under_dynamo(monkeypatch) -> None:
    """What the fix prevents: dynamo meets the model's code under the counter's dispatch mode,
    marks it to skip for good, and every step of the trial then runs eager."""
    _count_under_dynamo(monkeypatch)
    row = _trial("whole", count_flops=True)
    assert row["status"] == "ok" and row["flops_forward"] == FORWARD
    # 0 of WARMUP + ITERATIONS steps ran the model's compiled graph (the model's code was
    # marked to skip; dynamo may still have compiled other code it met in the eager steps).
    assert [c for c in compiled.CALLS if c["ours"]] == []
    assert not any(c["ours"] for c in compiled.COMPILES)


def test_without_set_stance_a_compiled_model_is_left_uncounted(monkeypatch) -> None:
    """torch < 2.6 has no set_stance: a model holding a compiled module is not counted,
    and the trial still runs compiled."""
    monkeypatch.setattr(flops, "_HAS_STANCE", False)
    for how in ("whole", "submodule", "inplace"):
        with pytest.raises(FlopCountError, match=r"torch\.compile'd: counting it needs torch >= 2\.6"):
            count_step_flops(compiled.build, {"batch_size": BATCH, "compile": how})
    assert compiled.COMPILES == [] and compiled.CALLS == []
    assert count_step_flops(compiled.build, {"batch_size": BATCH, "compile": "none"}).forward == FORWARD
    row = _trial("whole", count_flops=True)
    assert row["flops_forward"] is None and "torch >= 2.6" in row["flops_error"]
    _ran_compiled_every_step(row)
