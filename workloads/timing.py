"""Phase timers: CUDA events on a GPU, perf_counter_ns on a CPU.

A step has N phases and so N+1 boundaries. At each boundary the runner calls
`mark(i)`; after the last one it calls `read()`, which returns the step's raw
values: per-phase device milliseconds (None on a CPU, where device time is host
time) and the host's `perf_counter_ns` at each boundary. Turning those into
per-phase durations (`phase_ms`) is left until after the loop, off the hot path.

- Host times are always `perf_counter_ns` at the boundaries, taken without any
  synchronisation: they are what the host thread spent (on a GPU, mostly kernel
  launches; the device may still be busy).
- On a GPU, device times come from CUDA events recorded on the current stream
  at the same boundaries. `read()` synchronises once, on the last event, which
  is the only place the values are needed. That keeps the host free to run
  ahead within a step (the overlap a real training loop has).
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter_ns


class CpuPhaseTimer:
    """On a CPU the work is synchronous, so wall time is device time."""

    device_timed = False

    def __init__(self, n_phases: int) -> None:
        self._host = [0] * (n_phases + 1)

    def mark(self, boundary: int) -> None:
        self._host[boundary] = perf_counter_ns()

    def read(self) -> tuple[None, tuple[int, ...]]:
        return None, tuple(self._host)


class CudaPhaseTimer:
    """CUDA events at every boundary; one synchronisation per step, in `read()`.

    `event_factory` makes a timing event (`torch.cuda.Event(enable_timing=True)` on a
    GPU); the same N+1 events are reused every step, which is safe because `read()`
    waits for the last of them before the next step records any again.
    """

    device_timed = True

    def __init__(self, n_phases: int, event_factory: Callable[[], object]) -> None:
        self._host = [0] * (n_phases + 1)
        self._events = [event_factory() for _ in range(n_phases + 1)]

    def mark(self, boundary: int) -> None:
        self._host[boundary] = perf_counter_ns()
        self._events[boundary].record()

    def read(self) -> tuple[list[float], tuple[int, ...]]:
        ev = self._events
        # The one sync per step: elapsed_time() needs both events to have completed,
        # and the last event completes after every earlier one on the same stream.
        ev[-1].synchronize()
        device_ms = [ev[i].elapsed_time(ev[i + 1]) for i in range(len(ev) - 1)]
        return device_ms, tuple(self._host)


def phase_ms(boundaries_ns: tuple[int, ...]) -> list[float]:
    """Per-phase milliseconds from the host's clock readings at the phase boundaries."""
    b = boundaries_ns
    return [(b[i + 1] - b[i]) / 1e6 for i in range(len(b) - 1)]


def make_timer(device_type: str, n_phases: int, torch_module: object | None = None):
    if device_type == "cuda":
        torch = torch_module
        if torch is None:
            import torch
        return CudaPhaseTimer(n_phases, lambda: torch.cuda.Event(enable_timing=True))
    return CpuPhaseTimer(n_phases)
