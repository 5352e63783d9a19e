"""Phase timers: CUDA events on a GPU, perf_counter_ns on a CPU.

A step has N phases and so N+1 boundaries. At each boundary the runner calls
`mark(i)`; after the last one it calls `read()`, which returns the step's raw
values: per-phase device milliseconds and the GPU's idle gap before each phase
(both None on a CPU, where device time is host time), and the host's
`perf_counter_ns` at the start and the end of each phase. Turning those into
per-phase durations (`phase_ms`) is left until after the loop, off the hot path.
At a boundary the runner's own bookkeeping (`between`: memory peaks) runs after
the previous phase's end and before the next one's start, on both clocks, so no
phase is charged for it.

- Host times are always `perf_counter_ns` at the boundaries, taken without any
  synchronisation: they are what the host thread spent (on a GPU, mostly kernel
  launches; the device may still be busy).
- On a GPU, each phase has a start and an end CUDA event on the current stream.
  `mark(i)` records the end event of phase i-1, reads the host clock, runs the
  runner's between-phase bookkeeping (`between`, e.g. memory peaks), then
  records the start event of phase i. So a phase's device time excludes
  stepscope's own bookkeeping, and the device time from one phase's end event
  to the next one's start is a *gap*: nothing of the step was queued between
  them, so where the GPU had caught up with the host, it sat idle for that long
  (bookkeeping between phases; for the first phase, everything the host did
  between the previous step's end and this step's start: the step's one
  synchronisation, reading the timers, keeping the loss (`losses.LossTrace`),
  looping). Where the GPU was still busy
  with earlier work the gap is ~0.
- `read()` synchronises once, on the last event, which is the only place the
  values are needed. That keeps the host free to run ahead within a step (the
  overlap a real training loop has). Two sets of events alternate between
  steps, so the previous step's last event is still there to measure the gap
  before this step's first phase.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter_ns


def _nothing(boundary: int) -> None:
    pass


class CpuPhaseTimer:
    """On a CPU the work is synchronous, so wall time is device time."""

    device_timed = False

    def __init__(self, n_phases: int, between: Callable[[int], None] = _nothing) -> None:
        self._n = n_phases
        self._host = [0] * (2 * n_phases)  # start and end of each phase
        self._between = between

    def mark(self, boundary: int) -> None:
        if boundary:
            self._host[2 * boundary - 1] = perf_counter_ns()
        self._between(boundary)
        if boundary < self._n:
            self._host[2 * boundary] = perf_counter_ns()

    def read(self) -> tuple[None, None, tuple[int, ...]]:
        return None, None, tuple(self._host)


class CudaPhaseTimer:
    """A start and an end CUDA event per phase; one synchronisation per step, in `read()`.

    `event_factory` makes a timing event (`torch.cuda.Event(enable_timing=True)` on a
    GPU). Two sets of 2N events alternate between steps: a set is recorded again
    only after `read()` has waited for the set recorded before it.
    """

    device_timed = True

    def __init__(self, n_phases: int, event_factory: Callable[[], object],
                 between: Callable[[int], None] = _nothing) -> None:
        self._n = n_phases
        self._host = [0] * (2 * n_phases)  # start and end of each phase
        self._sets = [
            ([event_factory() for _ in range(n_phases)], [event_factory() for _ in range(n_phases)])
            for _ in range(2)
        ]
        self._current = 0
        self._previous_end = None  # the last event of the previous step, once read
        self._between = between

    def mark(self, boundary: int) -> None:
        starts, ends = self._sets[self._current]
        if boundary:
            ends[boundary - 1].record()
            self._host[2 * boundary - 1] = perf_counter_ns()
        self._between(boundary)
        if boundary < self._n:
            self._host[2 * boundary] = perf_counter_ns()
            starts[boundary].record()

    def read(self) -> tuple[list[float], list[float | None], tuple[int, ...]]:
        starts, ends = self._sets[self._current]
        # The one sync per step: elapsed_time() needs both events to have completed,
        # and the last event completes after every earlier one on the same stream.
        ends[-1].synchronize()
        device_ms = [starts[i].elapsed_time(ends[i]) for i in range(self._n)]
        first_gap = self._previous_end.elapsed_time(starts[0]) if self._previous_end is not None else None
        gaps = [first_gap] + [ends[i - 1].elapsed_time(starts[i]) for i in range(1, self._n)]
        self._previous_end = ends[-1]
        self._current ^= 1
        return device_ms, gaps, tuple(self._host)


def phase_ms(host_ns: tuple[int, ...]) -> list[float]:
    """Per-phase milliseconds from the host's clock at the start and end of each phase."""
    return [(host_ns[i + 1] - host_ns[i]) / 1e6 for i in range(0, len(host_ns), 2)]


def make_timer(device_type: str, n_phases: int, torch_module: object | None = None,
               between: Callable[[int], None] = _nothing):
    if device_type == "cuda":
        torch = torch_module
        if torch is None:
            import torch
        return CudaPhaseTimer(n_phases, lambda: torch.cuda.Event(enable_timing=True), between)
    return CpuPhaseTimer(n_phases, between)
