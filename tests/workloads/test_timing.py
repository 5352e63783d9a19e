"""Phase timers. The CUDA timer runs against a faithful fake of torch.cuda.Event:
events complete only once the (simulated) device has reached them, and
elapsed_time() refuses events that have not completed, as torch does."""

from __future__ import annotations

import time

import pytest

from stepscope.workloads.measure.timing import CpuPhaseTimer, CudaPhaseTimer, phase_ms


class FakeStream:
    """A device that runs queued work in order, in simulated milliseconds, beside a
    simulated host clock: work launched while the device is idle starts when the
    host launches it, so an empty queue is time the device sits idle."""

    def __init__(self) -> None:
        self.host_now = 0.0  # the host's clock; launches take no host time
        self.queued_until = 0.0  # when the last queued kernel will finish
        self.completed_until = 0.0  # how far the device has got (moves on synchronize)
        self.syncs = 0

    def launch(self, ms: float) -> None:
        self.queued_until = max(self.queued_until, self.host_now) + ms

    def host(self, ms: float) -> None:
        self.host_now += ms


class FakeEvent:
    def __init__(self, stream: FakeStream) -> None:
        self.stream = stream
        self.at: float | None = None

    def record(self) -> None:
        self.at = max(self.stream.queued_until, self.stream.host_now)

    def query(self) -> bool:
        return self.at is not None and self.at <= self.stream.completed_until

    def synchronize(self) -> None:
        self.stream.syncs += 1
        self.stream.completed_until = max(self.stream.completed_until, self.at)
        self.stream.host_now = max(self.stream.host_now, self.at)  # the host waited for it

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
        device_ms, gaps, host_ns = timer.read()
        host_ms = phase_ms(host_ns)
        assert device_ms == pytest.approx([1.5, 4.0 + step, 0.25])
        assert gaps == ([None] if step == 0 else [pytest.approx(0.0)]) + [pytest.approx(0.0)] * 2
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
    recorded = [e for e in events if e.at is not None]
    assert len(recorded) == 4  # a start and an end event per phase (the other set waits for the next step)
    assert not recorded[-1].query()  # work is in flight: the host ran ahead
    timer.read()
    assert all(e.query() for e in recorded)


def test_cuda_host_time_is_host_side_only():
    """The host returns from a launch at once: host_ms stays small while device_ms is large."""
    stream = FakeStream()
    timer = CudaPhaseTimer(1, lambda: FakeEvent(stream))
    timer.mark(0)
    stream.launch(500.0)
    timer.mark(1)
    device_ms, _, host_ns = timer.read()
    assert device_ms == [500.0] and phase_ms(host_ns)[0] < 50


def test_cpu_timer_measures_wall_time():
    timer = CpuPhaseTimer(2)
    timer.mark(0)
    time.sleep(0.02)
    timer.mark(1)
    timer.mark(2)
    device_ms, gaps, host_ns = timer.read()
    host_ms = phase_ms(host_ns)
    assert device_ms is None and gaps is None  # on a CPU device time is the host's wall time
    assert 20 <= host_ms[0] < 60 and host_ms[1] < 5


def test_gaps_are_the_device_idle_time_between_phases():
    """The host's between-phase bookkeeping and its work between steps leave the GPU
    idle only where the GPU had caught up with the host; phases exclude them."""
    stream = FakeStream()
    timer = CudaPhaseTimer(2, lambda: FakeEvent(stream), between=lambda b: stream.host(0.1))
    readings = []
    for _ in range(3):
        timer.mark(0)
        stream.launch(5.0)  # phase 0: the host launches 5 ms of work and runs ahead
        timer.mark(1)  # the GPU is busy: the 0.1 ms of bookkeeping costs it nothing
        stream.host(2.0)  # phase 1: host-side work while the GPU works through its queue...
        stream.launch(0.5)  # ... then a short kernel
        timer.mark(2)
        readings.append(timer.read())
        stream.host(3.0)  # between steps: the host loops and builds the next batch
    for step, (device_ms, gaps, _) in enumerate(readings):
        assert device_ms == pytest.approx([5.0, 0.5])
        assert gaps[1] == pytest.approx(0.0)
        # The GPU finished the previous step when the host synchronised, then waited
        # out the host's 3 ms between steps and the 0.1 ms of bookkeeping.
        assert gaps[0] == (None if step == 0 else pytest.approx(3.1))


def test_gaps_show_an_idle_gpu_between_phases():
    """A GPU that has nothing queued sits idle through the host's bookkeeping."""
    stream = FakeStream()
    timer = CudaPhaseTimer(2, lambda: FakeEvent(stream), between=lambda b: stream.host(0.25))
    timer.mark(0)
    stream.launch(0.01)  # a tiny kernel: done long before the host reaches the next boundary
    stream.host(1.0)
    timer.mark(1)
    stream.launch(0.01)
    timer.mark(2)
    device_ms, gaps, _ = timer.read()
    assert gaps[1] == pytest.approx(0.25)
    assert device_ms[0] == pytest.approx(1.0)  # the phase lasts as long as the host took to launch it


@pytest.mark.parametrize("cuda", [False, True])
def test_bookkeeping_between_phases_is_charged_to_no_phase(cuda):
    """The runner's `between` work (memory peaks) runs after one phase's end and before
    the next one's start, on the host clock as on the device's."""
    stream = FakeStream()
    between = lambda b: time.sleep(0.02)  # noqa: E731 - far longer than the phases
    timer = CudaPhaseTimer(2, lambda: FakeEvent(stream), between) if cuda else CpuPhaseTimer(2, between)
    timer.mark(0)
    timer.mark(1)
    timer.mark(2)
    _, _, host_ns = timer.read()
    assert len(host_ns) == 4 and all(ms < 10 for ms in phase_ms(host_ns))
    assert host_ns[2] - host_ns[1] >= 20e6  # the gap between phase 0's end and phase 1's start
