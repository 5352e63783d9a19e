"""Typed records: what the measurement code hands the runner, one field per column.

Each record's fields are named after the columns they fill (`stepscope.storage.schema`);
`stepscope.workloads.measure.rows` is the one place that turns them into rows, and
tests/storage/test_columns.py holds the field names and types to the schema's columns.

Units are in the names: `_bytes` bytes, `_ms` milliseconds, `_s` seconds, `_mhz`,
`_w` watts, `tflops` 10^12 FLOP/s; None where a value could not be measured.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class NvmlIdentity:
    """Everything NVML says about one GPU (`identity.nvml_identity`); None where it cannot
    say, with NVML's reason under `nvml_unavailable[field]`."""

    device_name: str | None = None
    device_uuid: str | None = None
    device_memory_bytes: int | None = None
    pci_bus_id: str | None = None
    sm_clock_mhz: int | None = None  # current clocks, at the trial's start
    mem_clock_mhz: int | None = None
    sm_clock_max_mhz: int | None = None
    mem_clock_max_mhz: int | None = None
    power_limit_w: float | None = None
    power_limit_default_w: float | None = None  # the board's default limit: what decides its variant
    ecc_enabled: bool | None = None
    ecc_pending: bool | None = None
    mig_enabled: bool | None = None
    mig_pending: bool | None = None
    driver_version: str | None = None
    cuda_driver_version: str | None = None  # the CUDA version the driver supports, "12.4"
    gpu_variant: str | None = None  # the exact board, e.g. "H100-SXM-80GB" (identity.gpu_variant)
    nvml_unavailable: Mapping[str, str] = field(default_factory=dict)
    is_mig_instance: bool | None = None  # a MIG slice's handle (nvmlDeviceIsMigDeviceHandle)
    mig_parent_sm_count: int | None = None  # SMs of the whole board a MIG slice is cut from


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """The device a trial ran on (`device.describe`). All but `cpu_model`,
    `host_memory_bytes` and `identity` are columns of `trials`; the `devices` row is
    made from all of it."""

    device_kind: str  # "cuda" | "cpu"
    device_uuid: str  # NVML's GPU-/MIG- UUID; CPU-<host> on a CPU
    host: str
    num_threads: int  # torch intra-op threads
    python_version: str
    torch_version: str
    device_name: str | None = None  # NVML's name on a GPU, the CPU model on a CPU
    device_index: int | None = None  # torch's index, after CUDA_VISIBLE_DEVICES
    device_memory_bytes: int | None = None
    sm_count: int | None = None
    compute_capability: str | None = None  # "9.0"
    driver_version: str | None = None
    cpu_count: int | None = None
    cuda_version: str | None = None  # the CUDA runtime torch was built with
    cudnn_version: str | None = None
    cpu_model: str | None = None
    host_memory_bytes: int | None = None
    identity: NvmlIdentity | None = None  # None without NVML (a CPU, no driver, unknown UUID)


#: The DeviceFacts fields that are not columns of `trials` (they go to `devices`).
DEVICE_ONLY_FIELDS = frozenset({"cpu_model", "host_memory_bytes", "identity"})


@dataclass(frozen=True, slots=True)
class Work:
    """FLOPs, FLOP peaks, MFU and HFU of a trial (`utilization.count`, then `utilization.rates`).
    FLOPs are per training step of the whole batch, a multiply-add counting 2.
    Model FLOPs = forward + backward (no recomputation): MFU's numerator; hardware
    FLOPs = model FLOPs + recompute: HFU's (PaLM, https://arxiv.org/abs/2204.02311 , appendix B)."""

    flops_forward: int | None = None  # forward and loss
    flops_backward: int | None = None  # the backward proper, activation checkpointing's recompute aside
    flops_recompute: int | None = None  # forward ops re-run in backward by activation checkpointing
    flops_analytic: int | None = None  # a built-in's closed form, e.g. gpt's (6N + 12·L·d·T) per token
    flops_uncounted: str | None = None  # comma-separated ops the counter had no formula for
    flops_error: str | None = None  # why nothing was counted, when nothing was
    flops_device: str | None = None  # where the counting step ran: meta, or cpu (one real CPU step) where meta failed
    achieved_tflops: float | None = None  # model FLOPs / mean measured step
    achieved_hardware_tflops: float | None = None  # hardware FLOPs / mean measured step
    gpu_variant: str | None = None
    peak_tflops_datasheet: float | None = None  # dense, for gpu_variant and the precision
    peak_tflops_measured: float | None = None  # matmul peak measured on this node
    mfu_datasheet: float | None = None  # achieved / datasheet peak
    mfu_measured: float | None = None  # achieved / measured peak
    hfu_datasheet: float | None = None  # achieved_hardware / datasheet peak
    hfu_measured: float | None = None  # achieved_hardware / measured peak
    mfu_flag: str | None = None  # why an MFU/HFU may be above 1, or the peak was re-measured (flop_peaks.FLAGS)


@dataclass(frozen=True, slots=True)
class MemoryUse:
    """Where a trial's memory went (`memory`), in bytes; the NVML fields on CUDA only."""

    param_bytes: int | None = None
    grad_bytes: int | None = None
    optimizer_state_bytes: int | None = None  # per-parameter state (Adam's moments, SGD's momentum)
    activation_bytes: int | None = None  # saved for backward on step 0: parameters, buffers, autocast copies aside
    autocast_weight_bytes: int | None = None  # autocast's low-precision weight copies saved for backward (step 0)
    alloc_retries: int | None = None  # CUDA caching allocator retries over the trial
    cuda_context_bytes: int | None = None  # right after the CUDA context was created (NVML)
    nvml_used_bytes: int | None = None  # after the measured steps (NVML)
    non_torch_bytes: int | None = None  # nvml_used_bytes - torch's reserved pool, same moment
    nvml_memory_scope: str | None = None  # "process" (this pid) or "device" (whole GPU)


@dataclass(frozen=True, slots=True)
class DeviceSamples:
    """The GPU's clocks, power and temperature sampled from NVML while the measured steps
    ran (`sampler.NvmlSampler`); every field None without NVML or on a CPU."""

    sm_clock_mhz_min: int | None = None  # lowest SM clock seen: a throttled trial shows here
    sm_clock_mhz_p50: float | None = None  # median SM clock over the samples
    mem_clock_mhz_p50: float | None = None
    power_draw_w_p50: float | None = None  # board power draw, median (NVML: 1 s average on Ampere+ but GA100)
    power_draw_w_max: float | None = None
    temperature_c_max: int | None = None  # GPU core temperature, the highest seen
    throttle_reasons: str | None = None  # every clock event reason seen, comma-separated, idle aside; '' for none
    nvml_samples: int | None = None  # samples taken (one at start, one at stop, one per interval between)


@dataclass(frozen=True, slots=True)
class Nonfinite:
    """The first step whose loss was not finite: its iteration (as `steps.iteration`,
    warmup first) and the value, NaN, +Inf or -Inf."""

    iteration: int
    value: float

    def describe(self, warmup: int) -> str:
        """E.g. `loss became nan at iteration 7 (measured step 2)`; both count from 0."""
        kind = "nan" if math.isnan(self.value) else ("inf" if self.value > 0 else "-inf")
        where = (f"warmup step {self.iteration}" if self.iteration < warmup
                 else f"measured step {self.iteration - warmup}")
        return f"loss became {kind} at iteration {self.iteration} ({where})"


@dataclass
class Measured:
    """What a trial's loop produced, filled in as it goes, so that a crash keeps what ran.
    The runner's own accumulator (mutable); `rows` turns it into the trial's rows."""

    device_ms: list[list[float] | None] = field(default_factory=list)  # per step; None on a CPU (= host)
    gaps_ms: list[list[float | None] | None] = field(default_factory=list)  # GPU idle before each phase
    host_ns: list[tuple[int, ...]] = field(default_factory=list)  # clock at each phase's start and end
    phase_memory_peaks: list[tuple] = field(default_factory=list)  # per step: (rss, allocated, reserved, retries)
    model_to_device_ms: float | None = None
    param_count: int | None = None
    measured_wall_s: float | None = None
    final_loss: float | None = None
    nonfinite: Nonfinite | None = None  # the first step whose loss was NaN or ±Inf (`trials.nonfinite_step`)
    unused_params: str | None = None  # a custom workload's spec keys it never read, comma-separated
    device_read: int = 0  # steps whose device readings are in (all of them once the loop is done)
    facts: DeviceFacts | None = None
    work: Work = field(default_factory=Work)
    mem: MemoryUse = field(default_factory=MemoryUse)
    samples: DeviceSamples = field(default_factory=DeviceSamples)

