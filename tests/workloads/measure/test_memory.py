"""GPU memory that torch does not see, from NVML. The fake follows pynvml: devices found
by UUID, nvmlDeviceGetComputeRunningProcesses lists (pid, usedGpuMemory) per process with
host pids (a container's own pid is then absent), unsupported calls raise NVMLError."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from stepscope.workloads.measure.memory import nvml_used_bytes

UUID = "GPU-1b8a6f43-3c7e-5d9a-a0b1-000000000001"
GIB = 2**30


class NVMLError(Exception):
    pass


class FakeNVML:
    def __init__(self, procs=None, device_used=3 * GIB, per_process_supported=True, init_fails=False):
        self.procs = procs if procs is not None else []
        self.device_used = device_used
        self.per_process_supported = per_process_supported
        self.init_fails = init_fails
        self.live = 0

    def nvmlInit(self):
        if self.init_fails:
            raise NVMLError("Driver Not Loaded")
        self.live += 1

    def nvmlShutdown(self):
        self.live -= 1

    def nvmlDeviceGetHandleByUUID(self, uuid):
        if uuid != UUID:
            raise NVMLError("Not Found")
        return object()

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        if not self.per_process_supported:
            raise NVMLError("Not Supported")
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in self.procs]

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(total=80 * GIB, used=self.device_used, free=80 * GIB - self.device_used)


def test_this_process_is_found_by_pid():
    nvml = FakeNVML(procs=[(1, 5 * GIB), (os.getpid(), 2 * GIB)])
    assert nvml_used_bytes(UUID, nvml=nvml) == (2 * GIB, "process")
    assert nvml.live == 0


@pytest.mark.parametrize(
    "nvml",
    [
        FakeNVML(procs=[(1, 5 * GIB)]),  # another pid namespace: our pid is not listed
        FakeNVML(procs=[(os.getpid(), None)]),  # no per-process figure (e.g. Windows WDDM)
        FakeNVML(per_process_supported=False),
    ],
)
def test_without_a_per_process_figure_the_device_total_is_used(nvml):
    assert nvml_used_bytes(UUID, nvml=nvml) == (3 * GIB, "device")
    assert nvml.live == 0


def test_no_driver_no_uuid_or_an_unknown_uuid_give_nothing():
    assert nvml_used_bytes(UUID, nvml=FakeNVML(init_fails=True)) == (None, None)
    assert nvml_used_bytes(None, nvml=FakeNVML()) == (None, None)
    nvml = FakeNVML()
    assert nvml_used_bytes("GPU-unknown", nvml=nvml) == (None, None)
    assert nvml.live == 0


class FakeCudaAllocator:
    """torch.cuda's allocator statistics: memory_stats_as_nested_dict gives
    {stat: {pool: {current, peak, allocated, freed}}}; memory_stats flattens it to
    "allocated_bytes.all.peak"; reset_peak_memory_stats sets each peak to current."""

    def __init__(self) -> None:
        self.current = {"allocated_bytes": 0, "reserved_bytes": 0}
        self.peak = dict(self.current)
        self.retries = 0  # num_alloc_retries: cumulative, never reset by reset_peak_memory_stats

    def alloc(self, allocated: int, reserved: int) -> None:
        self.current = {"allocated_bytes": allocated, "reserved_bytes": reserved}
        self.peak = {k: max(self.peak[k], v) for k, v in self.current.items()}

    def memory_stats_as_nested_dict(self, device=None):
        return self._nested()

    def _nested(self):
        stats = {k: {pool: {"current": self.current[k], "peak": self.peak[k], "allocated": 0, "freed": 0}
                     for pool in ("all", "large_pool", "small_pool")} for k in self.current}
        return {**stats, "num_alloc_retries": self.retries, "num_ooms": 0}

    def memory_stats(self, device=None):
        flat = {f"{k}.{pool}.{m}": v for k, pools in self._nested().items()
                if isinstance(pools, dict) for pool, ms in pools.items() for m, v in ms.items()}
        return {**flat, "num_alloc_retries": self.retries, "num_ooms": 0}

    def max_memory_allocated(self, device=None):
        return self.peak["allocated_bytes"]

    def max_memory_reserved(self, device=None):
        return self.peak["reserved_bytes"]

    def reset_peak_memory_stats(self, device=None):
        self.peak = dict(self.current)


@pytest.mark.parametrize("nested", [True, False])
def test_phase_memory_peaks_reset_at_every_boundary(nested, monkeypatch):
    from stepscope.workloads.measure.memory import PhaseMemoryPeaks

    cuda = FakeCudaAllocator()
    cuda.retries = 5  # retries before the step: not any phase's
    if not nested:  # an older torch: the public per-figure calls
        monkeypatch.setattr(FakeCudaAllocator, "memory_stats_as_nested_dict", None)
    memory_peaks = PhaseMemoryPeaks(SimpleNamespace(cuda=cuda), SimpleNamespace(type="cuda", index=0), 3)
    memory_peaks.mark(0)
    cuda.alloc(100, 200)
    cuda.alloc(50, 200)
    memory_peaks.mark(1)  # phase 0 peaked at 100 allocated
    cuda.retries += 2  # the allocator freed its cache and retried, twice
    cuda.alloc(70, 400)
    memory_peaks.mark(2)  # phase 1 starts from 50: its peak is 70, reserved grew to 400
    cuda.alloc(10, 400)
    memory_peaks.mark(3)
    _, allocated, reserved, retries = memory_peaks.read()
    memory_peaks.close()
    assert allocated == (100, 70, 70) and reserved == (200, 400, 400)
    assert retries == (0, 2, 0)
