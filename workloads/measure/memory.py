"""Where a step's memory goes, measured from the tensors and the allocator, not from formulas.

- Per trial: bytes of parameters, gradients, optimizer state, and what autograd
  saved for backward, counted with saved-tensor hooks on the trial's first step
  (warmup or not, so the figure never depends on `warmup`). Of what is saved:
  storage that belongs to a parameter is already in `param_bytes` and storage of a
  module buffer (BatchNorm's running statistics) is the model's state, so neither
  is counted; a copy of a parameter cast to another dtype (autocast's bf16/fp16
  weights) is real memory but no activation, so it goes to `autocast_weight_bytes`;
  the rest is `activation_bytes`. A storage saved twice counts once.
- Per phase of every step: on CUDA the allocator's peak allocated and reserved
  bytes (peaks reset at each phase boundary; host-side allocator statistics, no
  synchronisation); on every device the process's own peak resident memory,
  reset at each boundary through /proc/self/clear_refs and read as VmHWM from
  /proc/self/status (Linux; null elsewhere).
- On CUDA, from NVML, the memory torch's allocator does not see: the CUDA
  context (measured right after it is created) and, after the measured steps,
  everything the process holds beyond torch's reserved pool.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from stepscope.workloads.measure.nvml import device_handle


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def param_bytes(model: Any) -> int:
    return tensor_bytes(model.parameters())


def grad_bytes(model: Any) -> int:
    return tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)


#: Optimizer state keys that hold a per-parameter step counter (torch's Adam, AdamW, Adagrad,
#: RAdam, NAdam, Adamax...: a 0-d tensor, 4 or 8 bytes, on the CPU unless `capturable` or
#: `fused`), not a buffer the size of the parameter.
STEP_KEYS = frozenset({"step"})


def optimizer_state_bytes(optimizer: Any) -> int:
    """Bytes of every tensor the optimizer keeps per parameter (Adam's two moments,
    SGD's momentum), whatever the parameter's shape: a 0-d parameter (a learnable
    temperature) has 0-d moments, and they count. Only the step counters
    (`STEP_KEYS`) are left out. Tensors are counted by their own size and dtype."""
    total = 0
    for state in optimizer.state.values():
        for key, value in state.items():
            if key in STEP_KEYS or not hasattr(value, "element_size"):
                continue
            total += value.numel() * value.element_size()
    return total


class SavedTensors:
    """A `torch.autograd.graph.saved_tensors_hooks` pair that adds up what autograd saves,
    by storage: activations (`total`) and copies of parameters and buffers cast to another
    dtype (`autocast_weight_total`); parameters and buffers themselves are not counted.

    A cast copy is told apart two ways. Of a parameter that needs a gradient, autograd's
    node for the copy is ToCopyBackward0 over the parameter's AccumulateGrad. Of a frozen
    parameter or a buffer (LoRA's base weights under autocast) there is no node: a saved
    tensor with no history, of a model tensor's shape and another dtype, whose first
    `SAMPLE` elements equal that tensor's, cast, is its copy. That comparison is queued on
    the device (no synchronisation in the step) and read after the loop, by `total`.
    """

    SAMPLE = 16  # elements compared: a batch equal to a weight on all of them is no batch

    def __init__(self, model: Any) -> None:
        tensors = [*model.parameters(), *model.buffers()]
        self.model_storages = {t.untyped_storage().data_ptr() for t in tensors}
        self._params = {id(p) for p in model.parameters()}
        self._by_shape: dict[tuple, list] = {}
        for t in tensors:
            if t.is_floating_point():
                self._by_shape.setdefault(tuple(t.shape), []).append(t)
        self.storages: dict[int, int] = {}
        self.weight_copies: dict[int, int] = {}
        self._maybe: dict[int, tuple[int, Any]] = {}  # ptr -> (bytes, a device bool: a copy?)

    def pack(self, t: Any) -> Any:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in self.model_storages or ptr in self.storages or ptr in self.weight_copies or ptr in self._maybe:
            return t
        base = t._base if t._base is not None else t
        if self._is_weight_copy(base):
            self.weight_copies[ptr] = storage.nbytes()
        else:
            match = self._copy_of_a_frozen_tensor(base)
            if match is None:
                self.storages[ptr] = storage.nbytes()
            else:
                self._maybe[ptr] = (storage.nbytes(), match)
        return t

    def _is_weight_copy(self, base: Any) -> bool:
        fn = base.grad_fn
        if fn is None or fn.name() != "ToCopyBackward0" or not fn.next_functions:
            return False
        source = fn.next_functions[0][0]
        return id(getattr(source, "variable", None)) in self._params

    def _copy_of_a_frozen_tensor(self, base: Any) -> Any:
        """A 0-d device bool, true when `base` is a cast copy of a model tensor; None when
        it cannot be one (it has history, or no model tensor has its shape in another dtype)."""
        if base.grad_fn is not None or base.requires_grad or not base.is_floating_point():
            return None
        same = [m for m in self._by_shape.get(tuple(base.shape), ()) if m.dtype != base.dtype]
        if not same:
            return None
        import torch

        with torch.no_grad():
            mine = base.reshape(-1)[: self.SAMPLE]
            hits = [(mine == m.reshape(-1)[: self.SAMPLE].to(base.dtype)).all() for m in same]
            return torch.stack(hits).any() if len(hits) > 1 else hits[0]

    @staticmethod
    def unpack(t: Any) -> Any:
        return t

    def _resolve(self) -> None:
        # After the loop: reading the comparisons is the one synchronisation they need.
        for ptr, (nbytes, match) in self._maybe.items():
            (self.weight_copies if bool(match) else self.storages)[ptr] = nbytes
        self._maybe.clear()

    @property
    def total(self) -> int:
        self._resolve()
        return sum(self.storages.values())

    @property
    def autocast_weight_total(self) -> int:
        self._resolve()
        return sum(self.weight_copies.values())


class PeakRss:
    """This process's peak resident set size between boundaries: the kernel's VmHWM.

    Writing 5 to /proc/self/clear_refs resets the high-water mark to the current
    RSS (Linux >= 4.0); VmHWM in /proc/self/status then reads it (one pread of a
    file kept open, ~8 us). `getrusage(RUSAGE_SELF).ru_maxrss` is not used: it is
    the larger of VmHWM and a figure clear_refs does not reset, which exec() seeds
    with the peak of the process that started this one and every exiting thread
    raises, so it can report another process's peak.
    """

    def __init__(self) -> None:
        self.available = False
        try:
            self._clear = os.open("/proc/self/clear_refs", os.O_WRONLY)
        except OSError:
            return
        try:
            self._status = os.open("/proc/self/status", os.O_RDONLY)
            self.reset()
            self.read()
        except (OSError, ValueError):
            os.close(self._clear)
            return
        self.available = sys.platform.startswith("linux")

    def reset(self) -> None:
        os.write(self._clear, b"5")  # 5: reset the peak RSS to the current RSS

    def read(self) -> int:
        text = os.pread(self._status, 8192, 0)
        start = text.index(b"VmHWM:") + 6
        return int(text[start:text.index(b"kB", start)]) * 1024

    def close(self) -> None:
        if self.available:
            os.close(self._clear)
            os.close(self._status)


class PhaseMemoryPeaks:
    """Per-phase memory peaks (not FLOP peaks: those are `flop_peaks`'). Called at every
    phase boundary, inside the timer's mark: records the peaks of the phase that just
    ended and resets them for the next one.

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
    nvmlDeviceGetComputeRunningProcesses. Only a positive figure is a reading:
    newer drivers in containers list the pid with `usedGpuMemory` 0, pynvml
    gives None for NVML's "not available" and an older binding the raw sentinel
    (NVML_VALUE_NOT_AVAILABLE, 2**64 - 1); none of those is this process's use.

    Scope "device": where NVML lists no such reading (that, a container with its
    own pid namespace, a driver that does not report per-process use), the memory
    every process on the device has allocated, this one included: NVML's v2
    memory call, whose `used` leaves out what the driver and firmware reserve
    for themselves (the v1 call counts it: several hundred MB on an idle
    data-centre board), v1 where v2 is missing (`nvml.device_used_bytes`). A device figure
    can still be below this process's torch pool only if NVML and torch were
    read at different moments; callers subtracting from it must guard that.

    (None, None) without NVML, a driver, or a UUID.
    """
    from stepscope.workloads.measure.nvml import device_used_bytes, not_available

    with device_handle(uuid, nvml) as found:
        if found is None:
            return None, None
        nvml, handle = found
        pid = os.getpid() if pid is None else pid
        sentinel = not_available(nvml)
        try:
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                used = getattr(proc, "usedGpuMemory", None)
                if proc.pid == pid and used is not None and 0 < int(used) < sentinel:
                    return int(used), "process"
        except Exception:  # NVMLError_NotSupported and friends: fall back to the device
            pass
        used = device_used_bytes(nvml, handle)
        return (used, "device") if used is not None else (None, None)
