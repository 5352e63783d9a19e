"""Phase timers. The CUDA timer runs against a faithful fake of torch.cuda.Event:
events complete once the (simulated) device has reached them, by the host's clock
(query() never blocks; synchronize() makes the host wait), and elapsed_time()
refuses events that have not completed, as torch does."""

from __future__ import annotations

import time

import pytest

from stepscope.workloads.measure.timing import AHEAD, CpuPhaseTimer, CudaPhaseTimer, phase_ms


class FakeStream:
    """A device that runs queued work in order, in simulated milliseconds, beside a
    simulated host clock: work launched while the device is idle starts when the
    host launches it, so an empty queue is time the device sits idle."""

    def __init__(self) -> None:
        self.host_now = 0.0  # the host's clock; launches take no host time
        self.queued_until = 0.0  # when the last queued kernel will finish
        self.completed_until = 0.0  # how far the device has got (moves on synchronize)
        self.syncs = 0
        self.queries = 0

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
        # The device works while the host does: by the host's clock, everything queued
        # to finish by now has finished.
        self.stream.queries += 1
        done_until = max(self.stream.completed_until, self.stream.host_now)
        return self.at is not None and self.at <= done_until

    def synchronize(self) -> None:
        self.stream.syncs += 1
        self.stream.completed_until = max(self.stream.completed_until, self.at)
        self.stream.host_now = max(self.stream.host_now, self.at)  # the host waited for it

    def elapsed_time(self, end: FakeEvent) -> float:
        if not (self.query() and end.query()):
            raise RuntimeError("Both events must be completed before calculating elapsed time.")
        return end.at - self.at


def _steps(timer, stream, n, work, host_between=0.0):
    """Run `n` steps of len(work) phases, each phase launching `work[i]` ms of device
    work; the host spends `host_between` ms between steps. Returns every step's
    readings, by step, once drained."""
    readings = {}
    for _ in range(n):
        for i, ms in enumerate(work):
            timer.mark(i)
            stream.launch(ms)
        timer.mark(len(work))
        _, done = timer.end_step()
        readings.update({step: (dev, gaps) for step, dev, gaps in done})
        stream.host(host_between)
    readings.update({step: (dev, gaps) for step, dev, gaps in timer.drain()})
    return readings


def test_cuda_timer_reads_device_time_per_phase_without_waiting_while_the_host_runs_ahead():
    """A GPU-bound loop: 10 ms of device work per step, 1 ms of host time. The host runs
    AHEAD steps ahead and then waits once per step for the oldest, as a plain loop
    would be held by its launch queue; it never waits while it is less far ahead."""
    stream = FakeStream()
    timer = CudaPhaseTimer(3, lambda: FakeEvent(stream))
    syncs_per_step = []
    readings = {}
    for _ in range(12):
        before = stream.syncs
        for i, ms in enumerate((1.5, 8.0, 0.5)):
            timer.mark(i)
            stream.launch(ms)
        timer.mark(3)
        _, done = timer.end_step()
        readings.update({s: (dev, gaps) for s, dev, gaps in done})
        syncs_per_step.append(stream.syncs - before)
        stream.host(1.0)
    readings.update({s: (dev, gaps) for s, dev, gaps in timer.drain()})
    assert syncs_per_step[:AHEAD] == [0] * AHEAD  # running ahead: not one wait
    assert syncs_per_step[AHEAD:] == [1] * (12 - AHEAD)  # held AHEAD steps ahead
    assert sorted(readings) == list(range(12))
    for step, (dev, gaps) in readings.items():
        assert dev == pytest.approx([1.5, 8.0, 0.5])
        # The GPU never ran dry: each phase's work was queued behind the previous one.
        assert gaps == ([None] if step == 0 else [pytest.approx(0.0)]) + [pytest.approx(0.0)] * 2


def test_a_host_bound_loop_never_waits_and_its_gaps_show_the_idle_gpu():
    """1 ms of device work per step, 3 ms of host work between steps: each step's events
    have completed by the next step's end, so they are read without one wait, and the
    first phase's gap is the GPU's idle time while the host looped."""
    stream = FakeStream()
    timer = CudaPhaseTimer(2, lambda: FakeEvent(stream))
    readings = _steps(timer, stream, 8, (0.5, 0.5), host_between=3.0)
    assert stream.syncs == 1  # drain() after the loop waits for the last step only
    for step, (dev, gaps) in readings.items():
        assert dev == pytest.approx([0.5, 0.5])
        assert gaps[0] == (None if step == 0 else pytest.approx(2.0))  # 3 ms of host, 1 ms of it GPU-busy
        assert gaps[1] == pytest.approx(0.0)


def test_an_event_set_is_reused_only_after_the_step_after_it_was_read():
    """With AHEAD=1, sets are recycled every 3 steps; every step's first gap still reads
    the previous step's last event, never an event recorded again since."""
    stream = FakeStream()
    events = []

    def factory():
        events.append(FakeEvent(stream))
        return events[-1]

    timer = CudaPhaseTimer(1, factory, ahead=1)
    readings = _steps(timer, stream, 9, (2.0,), host_between=0.5)
    assert len(events) == 2 * 3
    assert [readings[s][0] for s in range(9)] == [pytest.approx([2.0])] * 9
    assert all(readings[s][1][0] == pytest.approx(0.0) for s in range(1, 9))


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
    assert len(recorded) == 4  # a start and an end event per phase
    _, done = timer.end_step()
    assert done == [] and stream.syncs == 0  # work is in flight: nothing read, no wait
    assert not recorded[-1].query()
    [(step, device_ms, gaps)] = list(timer.drain())
    assert step == 0 and device_ms == pytest.approx([2.0, 3.0]) and stream.syncs == 1
    assert all(e.query() for e in recorded)


def test_cuda_host_time_is_host_side_only():
    """The host returns from a launch at once: host_ms stays small while device_ms is large."""
    stream = FakeStream()
    timer = CudaPhaseTimer(1, lambda: FakeEvent(stream))
    timer.mark(0)
    stream.launch(500.0)
    timer.mark(1)
    host_ns, _ = timer.end_step()
    [(_, device_ms, _)] = list(timer.drain())
    assert device_ms == [500.0] and phase_ms(host_ns)[0] < 50


def test_cpu_timer_measures_wall_time():
    timer = CpuPhaseTimer(2)
    timer.mark(0)
    time.sleep(0.02)
    timer.mark(1)
    timer.mark(2)
    host_ns, done = timer.end_step()
    host_ms = phase_ms(host_ns)
    assert done == [] and list(timer.drain()) == []  # on a CPU device time is the host's wall time
    assert 20 <= host_ms[0] < 60 and host_ms[1] < 5


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
    _, done = timer.end_step()
    [(_, device_ms, gaps)] = done + list(timer.drain())  # read at once or after the loop: the same values
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
    host_ns, _ = timer.end_step()
    assert len(host_ns) == 4 and all(ms < 10 for ms in phase_ms(host_ns))
    assert host_ns[2] - host_ns[1] >= 20e6  # the gap between phase 0's end and phase 1's start


def test_ahead_must_be_positive():
    with pytest.raises(ValueError, match="ahead"):
        CudaPhaseTimer(2, lambda: FakeEvent(FakeStream()), ahead=0)
