"""Phase timers: CUDA events on a GPU, perf_counter_ns on a CPU.

A step has N phases and so N+1 boundaries. At each boundary the runner calls
`mark(i)`; after the last one it calls `end_step()`, which returns the step's
host clock readings at once, and the device readings of every earlier step
whose events have completed (`drain()` waits for the rest, after the loop).
A step's raw values are: per-phase device milliseconds and the GPU's idle gap
before each phase (both None on a CPU, where device time is host time), and
the host's `perf_counter_ns` at the start and the end of each phase. Turning
those into per-phase durations (`phase_ms`) is left until after the loop, off
the hot path. At a boundary the runner's own bookkeeping (`between`: memory
peaks) runs after the previous phase's end and before the next one's start,
on both clocks, so no phase is charged for it.

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
  between the previous step's end and this step's start: reading finished
  timers, keeping the loss (`losses.LossTrace`), looping). Where the GPU was
  still busy with earlier work the gap is ~0.
- The host never waits for the device to read a timer. Events are recorded
  into a ring of `RING` sets of 2N events; `end_step()` asks the oldest unread
  steps' last events whether they have completed (`Event.query()`, which does
  not block) and reads those that have. So the host runs ahead of the GPU as in
  a plain training loop: the next step's `data` phase and the loop's own work
  overlap the GPU's backlog. The host waits (`Event.synchronize()` on the
  oldest unread step) only when `AHEAD` steps are unread and it needs a set to
  record into: a loop that runs more than `AHEAD` steps ahead of its GPU is
  held there. A set is reused only once the step after it has been read too,
  since that step's first gap is measured from the set's last event.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from time import perf_counter_ns

#: How many steps the host may run ahead of the GPU before `end_step()` waits for the
#: oldest. A training loop without a synchronising call (`.item()`, a pageable copy, a
#: print of a loss) runs ahead until CUDA's launch queue fills (about a thousand kernels);
#: four steps is more than enough for the queue never to run dry at a step boundary.
AHEAD = 4
#: Event sets: the unread steps, the step being recorded, and the last read one (its
#: last event is where the next step's first gap starts).
RING = AHEAD + 2


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

    def end_step(self) -> tuple[tuple[int, ...], list]:
        """This step's host clock readings, and no device readings (there are none)."""
        return tuple(self._host), []

    def drain(self) -> list:
        return []


class CudaPhaseTimer:
    """A start and an end CUDA event per phase, read once complete, without waiting.

    `event_factory` makes a timing event (`torch.cuda.Event(enable_timing=True)` on a
    GPU). `end_step()` returns `(host_ns, done)`: this step's host clock readings,
    and `done`, a list of `(step, device_ms, gaps)` for the steps (numbered from 0 in
    the order they ended) whose device readings became available, oldest first.
    """

    device_timed = True

    def __init__(self, n_phases: int, event_factory: Callable[[], object],
                 between: Callable[[int], None] = _nothing, ahead: int = AHEAD) -> None:
        if ahead < 1:
            raise ValueError(f"ahead: must be >= 1, got {ahead}")
        self._n = n_phases
        self._host = [0] * (2 * n_phases)  # start and end of each phase
        self._sets = [
            ([event_factory() for _ in range(n_phases)], [event_factory() for _ in range(n_phases)])
            for _ in range(ahead + 2)
        ]
        self._ahead = ahead
        self._step = 0  # the step being recorded
        self._unread: deque[tuple[int, tuple[list, list], object | None]] = deque()
        self._last_end = None  # the last event of the step recorded before this one
        self._between = between

    def mark(self, boundary: int) -> None:
        starts, ends = self._sets[self._step % len(self._sets)]
        if boundary:
            ends[boundary - 1].record()
            self._host[2 * boundary - 1] = perf_counter_ns()
        self._between(boundary)
        if boundary < self._n:
            self._host[2 * boundary] = perf_counter_ns()
            starts[boundary].record()

    def end_step(self) -> tuple[tuple[int, ...], list[tuple[int, list[float], list[float | None]]]]:
        events = self._sets[self._step % len(self._sets)]
        self._unread.append((self._step, events, self._last_end))
        self._last_end = events[1][-1]
        self._step += 1
        done = []
        # Non-blocking: query() asks whether the device has passed the event.
        while self._unread and self._unread[0][1][1][-1].query():
            done.append(self._read(*self._unread.popleft()))
        # The next step records into the set `ahead + 1` steps back, which must be read
        # and so must the step after it. Wait only when the host is that far ahead.
        while len(self._unread) > self._ahead:
            step, events, previous_end = self._unread.popleft()
            # The one place the host waits for the device: it ran `ahead` steps ahead.
            events[1][-1].synchronize()
            done.append(self._read(step, events, previous_end))
        return tuple(self._host), done

    def drain(self) -> Iterator[tuple[int, list[float], list[float | None]]]:
        """Wait for every unread step and yield its readings, oldest first: after the loop.
        A generator, so that a device that fails part way still yields the steps before."""
        while self._unread:
            step, events, previous_end = self._unread.popleft()
            events[1][-1].synchronize()  # after the loop: the values are needed now
            yield self._read(step, events, previous_end)

    def _read(self, step: int, events: tuple[list, list], previous_end: object | None):
        # elapsed_time() needs both events completed: the step's last end event has, and
        # every event recorded before it on the same stream completed before it.
        starts, ends = events
        device_ms = [starts[i].elapsed_time(ends[i]) for i in range(self._n)]
        first_gap = previous_end.elapsed_time(starts[0]) if previous_end is not None else None
        gaps = [first_gap] + [ends[i - 1].elapsed_time(starts[i]) for i in range(1, self._n)]
        return step, device_ms, gaps


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
