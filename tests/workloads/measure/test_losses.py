"""LossTrace: each step's loss kept on the device, the first NaN or ±Inf found after the loop."""

from __future__ import annotations

import math

import pytest
import torch

from stepscope.workloads.measure.losses import LossTrace
from stepscope.workloads.measure.records import Nonfinite

NAN, INF = float("nan"), float("inf")


def first(losses, steps=None):
    trace = LossTrace(torch, torch.device("cpu"), len(losses))
    for step, loss in enumerate(losses):
        trace.record(step, loss)
    return trace.first_nonfinite(len(losses) if steps is None else steps)


def test_finite_losses_have_no_nonfinite_step():
    assert first([torch.tensor(2.5), torch.tensor(0.0), torch.tensor(-1e30)]) is None


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_the_first_bad_step_and_its_value(bad):
    got = first([torch.tensor(1.0), torch.tensor(bad), torch.tensor(NAN), torch.tensor(2.0)])
    assert got.iteration == 1
    assert math.isnan(got.value) if math.isnan(bad) else got.value == bad


def test_only_the_steps_that_ran_are_read():
    # A failed trial: step 2 never completed, so its slot is not looked at.
    trace = LossTrace(torch, torch.device("cpu"), 3)
    trace.record(0, torch.tensor(1.0))
    trace.record(1, torch.tensor(1.0))
    assert trace.first_nonfinite(2) is None


@pytest.mark.parametrize(("loss", "bad"), [
    (torch.tensor([[1.0, NAN], [2.0, 3.0]]), True),  # a non-scalar loss: any bad element counts
    (torch.tensor([INF, -INF]), True),  # whose sum is nan
    (torch.tensor([1.0, 2.0]), False),
    (torch.tensor(3, dtype=torch.int64), False),  # an integer loss is always finite
    (torch.tensor([1, 2], dtype=torch.int32), False),
    (torch.tensor(True), False),
    (torch.full((1000,), 65504.0, dtype=torch.float16), False),  # fp16's largest, summed in float64: finite
    (torch.tensor(INF, dtype=torch.bfloat16), True),
    (torch.tensor(1.0, requires_grad=True) * 2, False),
    (torch.empty(0), False),
])
def test_odd_losses_are_checked_without_crashing(loss, bad):
    assert (first([loss]) is not None) is bad


@pytest.mark.parametrize(("value", "iteration", "text"), [
    (NAN, 7, "loss became nan at iteration 7 (measured step 2)"),
    (INF, 4, "loss became inf at iteration 4 (warmup step 4)"),
    (-INF, 5, "loss became -inf at iteration 5 (measured step 0)"),
])
def test_the_error_text_says_which_step(value, iteration, text):
    assert Nonfinite(iteration, value).describe(warmup=5) == text


@pytest.mark.gpu
def test_recording_on_a_gpu_never_synchronises():
    """The per-step part is queued work only; the one read is after the loop."""
    device = torch.device("cuda")
    losses = [torch.tensor(1.0, device=device), torch.tensor(NAN, device=device, dtype=torch.float16),
              torch.ones(1, 1, device=device)]
    trace = LossTrace(torch, device, len(losses))
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
    try:
        for step, loss in enumerate(losses):
            trace.record(step, loss)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert trace.first_nonfinite(len(losses)).iteration == 1
