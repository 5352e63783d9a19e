"""What the runner's loop measures beside the phase timer, step by step, behind one protocol.

A step has the phases of `stepscope.storage.schema.PHASES` and so one more
boundary than phases. Boundaries are named after the phase that starts there (`DATA` ...
`OPTIMIZER`); `END` is the one after the last phase. The loop calls every measurer at
the same points of every step (`StepMeasurer`), and `Measurers` hands each point only to
the measurers that do something there, so the loop's cost does not grow with measurers
that have nothing to do at a point.

A new measurer is one `StepMeasurer` subclass here and one line in the loop's
`Measurers(...)`. Its hooks run off the phases' clocks, except `forward_context`, whose
context forward and loss run in (as autocast's): whatever it does there, those phases pay.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from stepscope.storage.schema import PHASES
from stepscope.workloads.measure import memory
from stepscope.workloads.measure.losses import LossTrace
from stepscope.workloads.measure.records import Measured
from stepscope.workloads.measure.sampler import NvmlSampler

#: A step's boundaries: where each phase starts (and the one before it ends), then END.
BOUNDARIES = {phase: PHASES.index(phase) for phase in PHASES}
DATA, TO_DEVICE, FORWARD, LOSS, BACKWARD, OPTIMIZER = (
    BOUNDARIES[p] for p in ("data", "to_device", "forward", "loss", "backward", "optimizer"))
END = len(PHASES)


class StepMeasurer:
    """One thing measured per step. Each hook does nothing unless a subclass says otherwise;
    the loop calls them, for every step, in this order:

    - `start_step(step)`: before the step's first boundary (and, for the first measured
      step, before the measured wall clock starts);
    - `forward_context(step)`: a context manager that forward and loss run in, or None;
    - `boundary(index)`: at each boundary (`DATA` ... `END`), inside the timer's mark:
      after the ended phase's clock stopped, before the next one's started, on both clocks;
    - `end_step(step, loss)`: after the step's last boundary, before the timer reads its
      clocks; `loss` is the step's loss, detached;

    and once, after the loop, `finish(completed)`: `completed` False when the loop failed
    (the readings of the steps that did complete are kept; the failure stays the status).
    """

    def start_step(self, step: int) -> None:
        pass

    def forward_context(self, step: int) -> contextlib.AbstractContextManager | None:
        return None

    def boundary(self, index: int) -> None:
        pass

    def end_step(self, step: int, loss: Any) -> None:
        pass

    def finish(self, completed: bool) -> None:
        pass


class Measurers:
    """The loop's measurers, each point handed to those that define it, in the order given
    (`finish` too: so a measurer that must stop before another reads the device comes first).

    `boundary` is what the timer calls between phases: the one measurer's own method where
    only one has boundary work, so that nothing stands between the timer and it."""

    def __init__(self, *measurers: StepMeasurer) -> None:
        self._starts = _defining(measurers, "start_step")
        self._contexts = _defining(measurers, "forward_context")
        self._boundaries = _defining(measurers, "boundary")
        self._ends = _defining(measurers, "end_step")
        self._finishes = _defining(measurers, "finish")
        if len(self._boundaries) == 1:
            self.boundary = self._boundaries[0]

    def start_step(self, step: int) -> None:
        for start in self._starts:
            start(step)

    def forward_context(self, step: int) -> contextlib.AbstractContextManager:
        if len(self._contexts) == 1:  # the common case, without building a list every step
            context = self._contexts[0](step)
            return _NO_CONTEXT if context is None else context
        contexts = [c for c in (f(step) for f in self._contexts) if c is not None]
        if len(contexts) > 1:
            return _all_of(contexts)
        return contexts[0] if contexts else _NO_CONTEXT

    def boundary(self, index: int) -> None:
        for boundary in self._boundaries:
            boundary(index)

    def end_step(self, step: int, loss: Any) -> None:
        for end in self._ends:
            end(step, loss)

    def finish(self, completed: bool) -> None:
        for finish in self._finishes:
            finish(completed)


_NO_CONTEXT = contextlib.nullcontext()  # holds no state: one serves every step


def _defining(measurers: tuple[StepMeasurer, ...], hook: str) -> list[Callable]:
    """The bound `hook` of each measurer that defines it (its class's or its own)."""
    default = getattr(StepMeasurer, hook)
    return [getattr(m, hook) for m in measurers if hook in vars(m) or getattr(type(m), hook) is not default]


@contextlib.contextmanager
def _all_of(contexts: list) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for context in contexts:
            stack.enter_context(context)
        yield


# ---------------------------------------------------------------- the measurers


class PhaseMemory(StepMeasurer):
    """Per phase of every step: peak RSS, and on CUDA the allocator's peak allocated and
    reserved bytes and its retries (`memory.PhaseMemoryPeaks`), into
    `out.phase_memory_peaks` (the `steps` columns peak_*_bytes, alloc_retries)."""

    def __init__(self, torch: Any, device: Any, out: Measured) -> None:
        self._peaks = memory.PhaseMemoryPeaks(torch, device, len(PHASES))
        self._out = out
        self.boundary = self._peaks.mark  # the timer calls it directly: off the device's clock

    def end_step(self, step: int, loss: Any) -> None:
        self._out.phase_memory_peaks.append(self._peaks.read())

    def finish(self, completed: bool) -> None:
        self._peaks.close()


class DeviceSampler(StepMeasurer):
    """Clocks, power, temperature and throttle reasons while the measured steps run
    (`sampler.NvmlSampler`: a daemon thread, a few NVML calls every 100 ms; a no-op on a
    CPU or without NVML), into `out.samples`."""

    def __init__(self, uuid: str | None, warmup: int, out: Measured) -> None:
        self._sampler = NvmlSampler(uuid)
        self._warmup = warmup
        self._out = out

    def start_step(self, step: int) -> None:
        if step == self._warmup:
            self._sampler.start()  # before the clock starts: opening NVML is no step's cost

    def finish(self, completed: bool) -> None:
        self._out.samples = self._sampler.stop()


class LossWatch(StepMeasurer):
    """Each step's loss, kept on the device (`losses.LossTrace`) and read once after the
    loop for the first NaN or ±Inf (`out.nonfinite`, the trials' nonfinite_step)."""

    def __init__(self, torch: Any, device: Any, steps: int, out: Measured) -> None:
        self._trace = LossTrace(torch, device, steps)
        self._out = out

    def end_step(self, step: int, loss: Any) -> None:
        # After the step's last phase ended, before the next one starts: no phase pays for
        # it, and on a GPU it is one queued copy, read once after the loop (no sync here).
        self._trace.record(step, loss)

    def finish(self, completed: bool) -> None:
        if completed:
            # The trace's one sync, after the clock stopped.
            self._out.nonfinite = self._trace.first_nonfinite(len(self._out.device_ms))
            return
        # A NaN loss in the steps that completed is often why a later one failed; the
        # failure stays the status.
        with contextlib.suppress(Exception):
            self._out.nonfinite = self._trace.first_nonfinite(len(self._out.device_ms))


class SavedForBackward(StepMeasurer):
    """What autograd saves for backward (`memory.SavedTensors`), counted with saved-tensor
    hooks on the first step, warmup or not (so the figure never depends on `warmup`): the
    hooks cost a few microseconds per saved tensor, in that step only. Into `out.mem`
    (activation_bytes, autocast_weight_bytes) when the loop completed."""

    def __init__(self, torch: Any, model: Any, out: Measured) -> None:
        self._saved = memory.SavedTensors(model)
        self._hooks = torch.autograd.graph.saved_tensors_hooks
        self._out = out

    def forward_context(self, step: int) -> contextlib.AbstractContextManager | None:
        return self._hooks(self._saved.pack, self._saved.unpack) if step == 0 else None

    def finish(self, completed: bool) -> None:
        if completed:
            self._out.mem = replace(self._out.mem, activation_bytes=self._saved.total,
                                    autocast_weight_bytes=self._saved.autocast_weight_total)
