"""Where a step's memory goes, measured from the tensors and the allocator, not from formulas.

- Per trial: bytes of parameters, gradients, optimizer state, and activations
  (what autograd saved for backward, counted with saved-tensor hooks on the first
  warmup step; storage that belongs to a parameter is already in `param_bytes`
  and is not counted again; a storage saved twice counts once).
- Per phase of every step: on CUDA the allocator's peak allocated and reserved
  bytes (peaks reset at each phase boundary; host-side allocator statistics, no
  synchronisation); on every device the process's peak resident memory, reset at
  each boundary through /proc/self/clear_refs (Linux; null elsewhere).
- On CUDA, from NVML, the memory torch's allocator does not see: the CUDA
  context (measured right after it is created) and, after the measured steps,
  everything the process holds beyond torch's reserved pool.
"""

from __future__ import annotations

import os
import resource
import sys
from typing import Any

from stepscope.workloads.measure.nvml import device_handle


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def param_bytes(model: Any) -> int:
    return tensor_bytes(model.parameters())


def grad_bytes(model: Any) -> int:
    return tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)


def optimizer_state_bytes(optimizer: Any) -> int:
    """Per-parameter state (Adam's two moments, SGD's momentum). Scalar bookkeeping
    such as Adam's `step` counters is left out: it is not a per-parameter buffer."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if hasattr(value, "numel") and value.dim() > 0:
                total += value.numel() * value.element_size()
    return total


class SavedTensors:
    """A `torch.autograd.graph.saved_tensors_hooks` pair that adds up what autograd saves."""

    def __init__(self, model: Any) -> None:
        self.param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.storages: dict[int, int] = {}

    def pack(self, t: Any) -> Any:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.param_storages and ptr not in self.storages:
            self.storages[ptr] = storage.nbytes()
        return t

    @staticmethod
    def unpack(t: Any) -> Any:
        return t

    @property
    def total(self) -> int:
        return sum(self.storages.values())


class PeakRss:
    """Peak resident set size between boundaries, via the kernel's high-water mark.

    Writing 5 to /proc/self/clear_refs resets the high-water mark (Linux >= 4.0);
    getrusage() then reads it in about 1.5 us, five times faster than parsing
    /proc/self/status. (getrusage also remembers the peak of threads that have
    exited; torch's worker threads live as long as the process, so that is moot.)
    """

    def __init__(self) -> None:
        try:
            self._clear = os.open("/proc/self/clear_refs", os.O_WRONLY)
            self.reset()
            self.available = sys.platform.startswith("linux")
        except OSError:
            self.available = False

    def reset(self) -> None:
        os.write(self._clear, b"5")  # 5: reset the peak RSS to the current RSS

    def read(self) -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    def close(self) -> None:
        if self.available:
            os.close(self._clear)


class PhasePeaks:
    """Called at every phase boundary, right after the timer: records the peaks of
    the phase that just ended and resets them for the next one.

    On CUDA the peaks are read from the caching allocator's statistics.
    `torch.cuda.max_memory_allocated` and `max_memory_reserved` each build and
    flatten the whole statistics dict (a hundred-odd keys) on every call; one
    `torch.cuda.memory_stats_as_nested_dict` per boundary reads both peaks from
    the unflattened dict, so the bookkeeping between phases stays cheap.
    """

    def __init__(self, torch: Any, device: Any, n_phases: int) -> None:
        self.rss = PeakRss()
        self.cuda = torch.cuda if device.type == "cuda" else None
        self.device = device
        self.n = n_phases
        self._rss = [None] * n_phases
        self._alloc = [None] * n_phases
        self._reserved = [None] * n_phases
        self._retries = [None] * n_phases
        self._retries_before = 0  # the allocator's cumulative count at the phase's start
        self._nested = getattr(self.cuda, "memory_stats_as_nested_dict", None)

    def _cuda_peaks(self) -> tuple[int, int, int]:
        """Peak allocated, peak reserved, and the cumulative allocation retries."""
        if self._nested is not None:
            stats = self._nested(self.device)
            return (stats["allocated_bytes"]["all"]["peak"], stats["reserved_bytes"]["all"]["peak"],
                    stats.get("num_alloc_retries", 0))
        return (self.cuda.max_memory_allocated(self.device), self.cuda.max_memory_reserved(self.device),
                self.cuda.memory_stats(self.device).get("num_alloc_retries", 0))

    def mark(self, boundary: int) -> None:
        rss, cuda = self.rss, self.cuda
        if boundary:
            if rss.available:
                self._rss[boundary - 1] = rss.read()
            if cuda is not None:
                i = boundary - 1
                self._alloc[i], self._reserved[i], retries = self._cuda_peaks()
                self._retries[i] = retries - self._retries_before
                self._retries_before = retries
        elif cuda is not None:
            self._retries_before = self._cuda_peaks()[2]
        if rss.available:
            rss.reset()
        if cuda is not None:
            cuda.reset_peak_memory_stats(self.device)

    def read(self) -> tuple[tuple, tuple, tuple, tuple]:
        return tuple(self._rss), tuple(self._alloc), tuple(self._reserved), tuple(self._retries)

    def close(self) -> None:
        self.rss.close()


def nvml_used_bytes(uuid: str | None, pid: int | None = None, nvml: Any | None = None) -> tuple[int | None, str | None]:
    """GPU memory in use as NVML sees it: (bytes, scope).

    Scope "process": what this process holds on the device (its CUDA context,
    torch's reserved pool, cuBLAS/cuDNN workspaces...), from
    nvmlDeviceGetComputeRunningProcesses. Where NVML lists no such pid (a
    container with its own pid namespace, a driver that does not report
    per-process use) the fallback is the whole device's used memory, scope
    "device". (None, None) without NVML, a driver, or a UUID.
    """
    with device_handle(uuid, nvml) as found:
        if found is None:
            return None, None
        nvml, handle = found
        pid = os.getpid() if pid is None else pid
        try:
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                used = getattr(proc, "usedGpuMemory", None)
                if proc.pid == pid and used is not None:
                    return int(used), "process"
        except Exception:  # NVMLError_NotSupported and friends: fall back to the device
            pass
        try:
            return int(nvml.nvmlDeviceGetMemoryInfo(handle).used), "device"
        except Exception:
            return None, None
