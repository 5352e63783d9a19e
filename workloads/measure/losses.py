"""A trial's loss, step by step, watched for NaN and ±Inf without slowing the step down.

Each step's loss is copied into one slot of a tensor on the device (`record`), after
the step's last phase has ended and before the next step's first one starts, so no
phase is charged for it; on a GPU the copy is queued like any other kernel and nothing
waits for it. The slots are read once, after the loop (`first_nonfinite`): one
synchronisation per trial instead of one per step, which would change the timings.
"""

from __future__ import annotations

from typing import Any

from stepscope.workloads.measure.records import Nonfinite


class LossTrace:
    """One float64 slot per step, on the trial's device."""

    def __init__(self, torch: Any, device: Any, steps: int) -> None:
        self._torch = torch
        self._values = torch.zeros(steps, dtype=torch.float64, device=device)

    def record(self, step: int, loss: Any) -> None:
        """Keep step `step`'s loss. A scalar is copied as it is (one tiny kernel); any other
        shape is summed in float64, which is finite exactly when every element is (finite
        fp16/bf16/fp32 values cannot overflow a float64 sum). Integer losses are cast."""
        loss = loss.detach()
        self._values[step] = loss if loss.dim() == 0 else loss.sum(dtype=self._torch.float64)

    def first_nonfinite(self, steps: int) -> Nonfinite | None:
        """The first of the first `steps` recorded steps whose loss was NaN or ±Inf, if any.
        Reads the device: the trace's one synchronisation, after the loop."""
        values = self._values[:steps]
        bad = (~self._torch.isfinite(values)).nonzero()
        if not len(bad):
            return None
        iteration = int(bad[0, 0])
        return Nonfinite(iteration, float(values[iteration]))
