"""The GPU while the measured steps run: clocks, power, temperature and clock event reasons.

The clocks `devices` records are read at the trial's start, when the GPU is
idle; a board that then throttles (power cap, heat, a slowdown signal) runs the
steps at other clocks, and its timings mean something else. `NvmlSampler` reads
NVML from a daemon thread while the steps run: one sample when started, one per
interval, one when stopped, so even a loop shorter than the interval has two.
Summarised as `records.DeviceSamples` (the `trials` columns sm_clock_mhz_min,
..., nvml_samples).

The NVML calls are ctypes foreign calls, which release the GIL while the driver
answers; the Python around them holds it for a few microseconds per call.
bench/sampler_cost.py measures both costs.

Without NVML (pynvml missing, no driver, an unknown UUID) or on a CPU (a
`CPU-<host>` UUID) the sampler does nothing and stop() returns all-None fields.
Torch-free. NVML reference: https://docs.nvidia.com/deploy/nvml-api/group__nvmlDeviceQueries.html
"""

from __future__ import annotations

import re
import statistics
import threading
from collections.abc import Callable
from typing import Any

from stepscope.workloads.measure.nvml import parent_handle
from stepscope.workloads.measure.records import DeviceSamples

# 100 ms. NVML's power reading is itself a 1 s average on Ampere and newer boards
# (GA100 aside: nvmlDeviceGetPowerUsage in the reference above), so sampling it faster
# adds nothing; a clock change that lasts under 100 ms moves a multi-second trial's
# median by little, and a sustained throttle shows in the minimum and in the reasons.
# Five NVML calls per sample at 10 Hz keep the sampler's share of a core small.
DEFAULT_INTERVAL_S = 0.1
JOIN_TIMEOUT_S = 5.0  # the longest stop() waits for a sample in progress

# Clock event reason constants in pynvml, newest spelling first ("ClocksThrottleReason"
# is the deprecated name of the same bits). Names are read from the module, never assumed.
_REASON_PREFIXES = ("nvmlClocksEventReason", "nvmlClocksThrottleReason")
# Not reasons: no bit, every bit, and the deprecated alias of ApplicationsClocksSetting.
_NOT_REASONS = {"None", "All", "UserDefinedClocks"}
_IDLE = "GpuIdle"  # the GPU had no work: not a throttle of the measured steps


class NvmlSampler:
    """Samples one GPU (by NVML UUID) every `interval_s` seconds between start() and stop().

    `uuid`: NVML's GPU- or MIG- UUID (a MIG slice is sampled through its parent
    board: clocks, power and temperature are the board's); None or CPU-... for a
    no-op. `nvml`: pynvml or a stand-in with its API; imported on start() if None.
    Raises ValueError for an interval that is not a positive number of seconds.
    """

    def __init__(self, uuid: str | None, interval_s: float = DEFAULT_INTERVAL_S, nvml: Any | None = None) -> None:
        if not (isinstance(interval_s, (int, float)) and interval_s > 0):
            raise ValueError(f"interval_s: must be a positive number of seconds, got {interval_s!r}")
        self.uuid, self.interval_s, self._nvml = uuid, float(interval_s), nvml
        self._probes: dict[str, Callable[[], Any] | None] = {}
        self._reason_fns: list[str] = []
        self._names: dict[int, str] = {}
        self._board: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._active = False
        self._result: DeviceSamples | None = None
        self.sm_mhz: list[int] = []
        self.mem_mhz: list[int] = []
        self.power_mw: list[int] = []
        self.temp_c: list[int] = []
        self.reasons = 0  # every reason bit seen, OR-ed
        self.reasons_read = 0  # samples whose reasons were read
        self.count = 0  # samples that read at least one value

    # ------------------------------------------------------------ lifecycle

    def start(self) -> NvmlSampler:
        """Open NVML, take the first sample and start the thread; a no-op where there is
        nothing to sample. Returns self."""
        if self._active or self._result is not None:
            return self
        handle = self._open()
        if handle is None:
            return self
        self._active = True
        self._setup(handle)
        self.sample()
        self._thread = threading.Thread(target=self._run, name="stepscope-nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> DeviceSamples:
        """Stop the thread, take the last sample, close NVML; the summary (the same one on
        every later call). All fields None where nothing was sampled."""
        if self._result is not None:
            return self._result
        if not self._active:
            self._result = DeviceSamples()
            return self._result
        self._stopping.set()
        if self._thread is not None:
            # An NVML call that hangs (a wedged driver) must not hang the trial: after the
            # wait the thread is left to the daemon's fate, and NVML open under it.
            self._thread.join(timeout=JOIN_TIMEOUT_S + self.interval_s)
        if self._thread is None or not self._thread.is_alive():
            self.sample()
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # shutting down is best effort
                pass
        self._active = False
        self._result = self.summary()
        return self._result

    def __enter__(self) -> NvmlSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _open(self) -> Any | None:
        uuid = self.uuid
        if not uuid or uuid.startswith("CPU-"):
            return None
        if self._nvml is None:
            try:
                import pynvml
            except ImportError:
                return None
            self._nvml = pynvml
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except Exception:  # no driver, no libnvidia-ml
            return None
        # torch names a MIG slice GPU-<uuid>; NVML knows it as MIG-<uuid>.
        candidates = [uuid] + (["MIG-" + uuid.removeprefix("GPU-")] if uuid.startswith("GPU-") else [])
        for candidate in candidates:
            try:
                return nvml.nvmlDeviceGetHandleByUUID(candidate)
            except Exception:  # an unknown UUID
                continue
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass
        return None

    def _setup(self, handle: Any) -> None:
        nvml = self._nvml
        board = parent_handle(nvml, handle) or handle
        sm, mem = getattr(nvml, "NVML_CLOCK_SM", None), getattr(nvml, "NVML_CLOCK_MEM", None)
        temp = getattr(nvml, "NVML_TEMPERATURE_GPU", None)
        self._probes = {
            "sm": lambda: nvml.nvmlDeviceGetClockInfo(board, sm),
            "mem": lambda: nvml.nvmlDeviceGetClockInfo(board, mem),
            "power": lambda: nvml.nvmlDeviceGetPowerUsage(board),
            "temp": lambda: nvml.nvmlDeviceGetTemperature(board, temp),
        }
        self._reason_fns = [f for f in ("nvmlDeviceGetCurrentClocksEventReasons",
                                        "nvmlDeviceGetCurrentClocksThrottleReasons") if hasattr(nvml, f)]
        self._board = board
        self._names = reason_names(nvml)

    def _run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            self.sample()

    # ------------------------------------------------------------ sampling

    def sample(self) -> bool:
        """Read every metric once; True if any was read. A metric whose call fails is
        not asked again (an unsupported query fails every time). The reasons are read
        first: in a sample where NVML says the GPU was idle (before the first kernel of
        the measured steps reached it, or after the last), its clocks and power are idle
        figures, not the steps', and are left out; the temperature is kept."""
        read = idle = False
        while self._reason_fns:
            try:
                mask = int(getattr(self._nvml, self._reason_fns[0])(self._board))
                idle = bool(mask & self._idle_bit)
                self.reasons |= mask
                self.reasons_read += 1
                read = True
                break
            except Exception:  # a driver without the newer call: try the older name once
                self._reason_fns.pop(0)
        for key, out in (("sm", self.sm_mhz), ("mem", self.mem_mhz), ("power", self.power_mw), ("temp", self.temp_c)):
            probe = self._probes.get(key)
            if probe is None or (idle and key != "temp"):
                continue
            try:
                out.append(int(probe()))
                read = True
            except Exception:  # NotSupported on this board, NoPermission in a container
                self._probes[key] = None
        self.count += read
        return read

    @property
    def _idle_bit(self) -> int:
        return next((bit for bit, name in self._names.items() if name == _IDLE), 0)

    def summary(self) -> DeviceSamples:
        """What has been sampled so far, as `DeviceSamples`."""
        if not self.count:
            return DeviceSamples(nvml_samples=0) if self._nvml is not None and self._probes else DeviceSamples()
        return DeviceSamples(
            sm_clock_mhz_min=min(self.sm_mhz) if self.sm_mhz else None,
            sm_clock_mhz_p50=float(statistics.median(self.sm_mhz)) if self.sm_mhz else None,
            mem_clock_mhz_p50=float(statistics.median(self.mem_mhz)) if self.mem_mhz else None,
            power_draw_w_p50=statistics.median(self.power_mw) / 1000.0 if self.power_mw else None,
            power_draw_w_max=max(self.power_mw) / 1000.0 if self.power_mw else None,
            temperature_c_max=max(self.temp_c) if self.temp_c else None,
            throttle_reasons=describe_reasons(self.reasons, self._names) if self.reasons_read else None,
            nvml_samples=self.count,
        )


def reason_names(nvml: Any) -> dict[int, str]:
    """{bit: name} of NVML's clock event reasons, from the module's constants
    (`nvmlClocksEventReasonSwPowerCap` -> "SwPowerCap"); the newer spelling wins where
    both name a bit, and the older one adds bits the newer lacks (BoardLimit...)."""
    names: dict[int, str] = {}
    for prefix in _REASON_PREFIXES:
        for attr in sorted(dir(nvml)):
            if not attr.startswith(prefix) or attr[len(prefix):] in _NOT_REASONS:
                continue
            value = getattr(nvml, attr)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0 and value & (value - 1) == 0:
                names.setdefault(value, attr[len(prefix):])
    return names


def describe_reasons(mask: int, names: dict[int, str]) -> str:
    """The reasons in `mask`, comma-separated in bit order, GpuIdle left out, each NVML's
    name in snake case (`SwPowerCap` -> "sw_power_cap", `HwThermalSlowdown` ->
    "hw_thermal_slowdown"); a bit the module has no name for as hex ("0x800"); '' for none."""
    out = []
    bit = 1
    while bit <= mask:
        if mask & bit and names.get(bit) != _IDLE:
            name = names.get(bit)
            out.append(re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower() if name else hex(bit))
        bit <<= 1
    return ",".join(out)
