"""Phase timers. The CUDA timer runs against a faithful fake of torch.cuda.Event:
events complete only once the (simulated) device has reached them, and
elapsed_time() refuses events that have not completed, as torch does."""

from __future__ import annotations

import time

import pytest

from workloads.timing import CpuPhaseTimer, CudaPhaseTimer, phase_ms


class FakeStream:
    """A device that runs queued kernels back to back, in simulated milliseconds."""

    def __init__(self) -> None:
        self.queued_until = 0.0  # when the last queued kernel will finish
        self.completed_until = 0.0  # how far the device has got (moves on synchronize)
        self.syncs = 0

    def launch(self, ms: float) -> None:
        self.queued_until += ms


class FakeEvent:
    def __init__(self, stream: FakeStream) -> None:
        self.stream = stream
        self.at: float | None = None

    def record(self) -> None:
        self.at = self.stream.queued_until

    def query(self) -> bool:
        return self.at is not None and self.at <= self.stream.completed_until

    def synchronize(self) -> None:
        self.stream.syncs += 1
        self.stream.completed_until = max(self.stream.completed_until, self.at)

    def elapsed_time(self, end: FakeEvent) -> float:
        if not (self.query() and end.query()):
            raise RuntimeError("Both events must be completed before calculating elapsed time.")
        return end.at - self.at


def test_cuda_timer_reads_device_time_per_phase_with_one_sync_per_step():
    stream = FakeStream()
    timer = CudaPhaseTimer(3, lambda: FakeEvent(stream))
    for step in range(4):
        timer.mark(0)
        stream.launch(1.5)
        timer.mark(1)
        stream.launch(4.0 + step)
        timer.mark(2)
        stream.launch(0.25)
        timer.mark(3)
        device_ms, host_ns = timer.read()
        host_ms = phase_ms(host_ns)
        assert device_ms == pytest.approx([1.5, 4.0 + step, 0.25])
        assert len(host_ms) == 3 and all(h >= 0 for h in host_ms)
        assert stream.syncs == step + 1


def test_cuda_timer_never_reads_before_the_device_is_done():
    stream = FakeStream()
    events = []

    def factory():
        events.append(FakeEvent(stream))
        return events[-1]

    timer = CudaPhaseTimer(2, factory)
    timer.mark(0)
    stream.launch(2.0)
    timer.mark(1)
    stream.launch(3.0)
    timer.mark(2)
    assert not events[-1].query()  # work is in flight: the host ran ahead
    timer.read()
    assert all(e.query() for e in events)


def test_cuda_host_time_is_host_side_only():
    """The host returns from a launch at once: host_ms stays small while device_ms is large."""
    stream = FakeStream()
    timer = CudaPhaseTimer(1, lambda: FakeEvent(stream))
    timer.mark(0)
    stream.launch(500.0)
    timer.mark(1)
    device_ms, host_ns = timer.read()
    assert device_ms == [500.0] and phase_ms(host_ns)[0] < 50


def test_cpu_timer_measures_wall_time():
    timer = CpuPhaseTimer(2)
    timer.mark(0)
    time.sleep(0.02)
    timer.mark(1)
    timer.mark(2)
    device_ms, host_ns = timer.read()
    host_ms = phase_ms(host_ns)
    assert device_ms is None  # on a CPU device time is the host's wall time
    assert 20 <= host_ms[0] < 60 and host_ms[1] < 5
