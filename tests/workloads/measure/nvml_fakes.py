"""A stand-in for pynvml (nvidia-ml-py 12/13) that follows its real API, for the tests.

What it keeps of the real thing:
- errors are NVMLError subclasses built from NVML's return code (NotSupported is 3);
- devices are found by UUID (GPU-... for a board, MIG-... for a MIG slice), never by index;
- a MIG slice's handle answers for the slice (name, UUID, memory, its SM count through
  nvmlDeviceGetAttributes, which NVML "currently only supports" for MIG handles) and
  NotSupported for what belongs to the board (clocks, power, ECC/MIG mode, PCI, power
  usage, temperature, clock reasons): those come from
  nvmlDeviceGetDeviceHandleFromMigDeviceHandle's parent;
- nvmlDeviceIsMigDeviceHandle returns the ctypes c_uint itself, as pynvml does;
- nvmlDeviceGetMemoryInfo(handle) is the v1 struct, whose `used` includes the memory the
  driver reserves for itself; with version=nvmlMemory_v2 the v2 struct, with `reserved`
  apart and `used` without it (free + used + reserved = total); a driver without the v2
  call raises NVMLError_FunctionNotFound, a binding without it a TypeError;
- nvmlDeviceGetComputeRunningProcesses lists (pid, usedGpuMemory) with host pids;
  usedGpuMemory is None where pynvml saw NVML_VALUE_NOT_AVAILABLE (or, `raw_sentinel`,
  the unsigned sentinel itself, as older bindings passed it on);
- power in milliwatts, the CUDA driver version as 1000*major + 10*minor, older bindings
  return bytes where newer ones return str.
Its constants deliberately differ from pynvml's values (NVML_CLOCK_SM is 1 in pynvml, 11
here; the clock-reason bits are shuffled), so code that hard-codes one fails.
"""

from __future__ import annotations

import ctypes
from types import SimpleNamespace

MIB = 2**20
GIB = 2**30


class NVMLError(Exception):
    """pynvml.NVMLError: carries `value`, the NVML return code; str() is NVML's text."""

    _text = {3: "Not Supported", 4: "Insufficient Permissions", 6: "Not Found", 13: "Function Not Found"}

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return self._text.get(self.value, f"NVML Error with code {self.value}")


class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's own spelling
    def __init__(self) -> None:
        super().__init__(3)


class NVMLError_FunctionNotFound(NVMLError):  # noqa: N801
    def __init__(self) -> None:
        super().__init__(13)


class NVMLError_NotFound(NVMLError):  # noqa: N801
    def __init__(self) -> None:
        super().__init__(6)


# Board-level queries a MIG handle does not answer.
_BOARD_ONLY = {
    "nvmlDeviceGetClockInfo", "nvmlDeviceGetMaxClockInfo", "nvmlDeviceGetClock", "nvmlDeviceGetApplicationsClock",
    "nvmlDeviceGetPowerManagementLimit", "nvmlDeviceGetEnforcedPowerLimit",
    "nvmlDeviceGetPowerManagementDefaultLimit", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetTemperature",
    "nvmlDeviceGetEccMode", "nvmlDeviceGetMigMode", "nvmlDeviceGetPciInfo", "nvmlDeviceGetNumGpuCores",
    "nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons",
}


class FakeNVML:
    """The slice of pynvml stepscope uses, over a table of devices by UUID.

    A device is a dict: name, memory (total bytes); for boards optionally bus, power_mw
    (current limit), default_power_mw, enforced_power_mw, clocks / max_clocks / app_clocks
    ({clock constant: MHz}), cores, cc; allocated and reserved bytes (memory info); procs
    [(pid, usedGpuMemory)]; and scripts, lists cycled one value per call: sm_mhz, mem_mhz,
    power_usage_mw, temp_c, reasons. A MIG slice has parent (the board's UUID) and sm_count.
    """

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVML_CLOCK_SM = 11
    NVML_CLOCK_MEM = 12
    NVML_CLOCK_ID_APP_CLOCK_TARGET = 15
    NVML_TEMPERATURE_GPU = 40
    NVML_FEATURE_DISABLED = 20
    NVML_FEATURE_ENABLED = 21
    NVML_DEVICE_MIG_DISABLE = 30
    NVML_DEVICE_MIG_ENABLE = 31
    nvmlMemory_v2 = 0x7777  # pynvml: 0x02000028
    NVML_VALUE_NOT_AVAILABLE_ulonglong = ctypes.c_ulonglong(-1)
    # Clock event reasons, bits shuffled from pynvml's (GpuIdle is 0x1 there, SwPowerCap 0x4).
    nvmlClocksEventReasonGpuIdle = 0x10
    nvmlClocksEventReasonApplicationsClocksSetting = 0x2
    nvmlClocksEventReasonUserDefinedClocks = 0x2  # deprecated alias, as in pynvml
    nvmlClocksEventReasonSwPowerCap = 0x1
    nvmlClocksEventReasonHwSlowdown = 0x8
    nvmlClocksEventReasonSwThermalSlowdown = 0x4
    nvmlClocksEventReasonNone = 0x0
    nvmlClocksEventReasonAll = 0x1F
    nvmlClocksThrottleReasonGpuIdle = 0x10
    nvmlClocksThrottleReasonSwPowerCap = 0x1
    nvmlClocksThrottleReasonBoardLimit = 0x40  # only under the older prefix, as in pynvml 13

    def __init__(self, gpus: dict[str, dict], *, as_bytes=False, unsupported=(), init_fails=False,
                 driver="550.54.15", cuda=12040, v2_memory=True, raw_sentinel=False, missing=()):
        self.gpus, self.as_bytes, self.unsupported = gpus, as_bytes, set(unsupported)
        self.init_fails, self.driver, self.cuda = init_fails, driver, cuda
        self.v2_memory, self.raw_sentinel = v2_memory, raw_sentinel
        self.initialised = 0
        self.calls: list[tuple[str, str]] = []  # (function, handle) of every device query
        self.returned: dict[str, list] = {}  # script values handed out, by script name
        self._cursor: dict[tuple[str, str], int] = {}
        for name in missing:  # functions an older binding does not have
            setattr(self, name, property())

    def __getattribute__(self, name):
        value = object.__getattribute__(self, name)
        if isinstance(value, property):  # a function this binding lacks
            raise AttributeError(name)
        return value

    # ------------------------------------------------------------ plumbing

    def _out(self, text: str):
        return text.encode() if self.as_bytes else text

    def _ask(self, fn: str, handle: str) -> dict:
        self.calls.append((fn, handle))
        if fn in self.unsupported:
            raise NVMLError_NotSupported()
        gpu = self.gpus[handle]
        if "parent" in gpu and fn in _BOARD_ONLY:
            raise NVMLError_NotSupported()
        return gpu

    def _script(self, handle: str, key: str):
        values = self._ask_script(handle, key)
        i = self._cursor.get((handle, key), 0)
        self._cursor[(handle, key)] = i + 1
        value = values[i % len(values)]
        self.returned.setdefault(key, []).append(value)
        return value

    def _ask_script(self, handle: str, key: str) -> list:
        values = self.gpus[handle].get(key)
        if not values:
            raise NVMLError_NotSupported()
        return values

    # ------------------------------------------------------------ system

    def nvmlInit(self):
        if self.init_fails:
            raise NVMLError(12)  # NVML_ERROR_LIBRARY_NOT_FOUND
        self.initialised += 1

    def nvmlShutdown(self):
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self):
        if "nvmlSystemGetDriverVersion" in self.unsupported:
            raise NVMLError_NotSupported()
        return self._out(self.driver)

    def nvmlSystemGetCudaDriverVersion(self):
        if "nvmlSystemGetCudaDriverVersion" in self.unsupported:
            raise NVMLError_NotSupported()
        return self.cuda

    # ------------------------------------------------------------ identity

    def nvmlDeviceGetHandleByUUID(self, uuid):
        if uuid not in self.gpus:
            raise NVMLError_NotFound()
        return uuid

    def nvmlDeviceGetName(self, handle):
        return self._out(self._ask("nvmlDeviceGetName", handle)["name"])

    def nvmlDeviceGetUUID(self, handle):
        self._ask("nvmlDeviceGetUUID", handle)
        return self._out(handle)

    def nvmlDeviceGetPciInfo(self, handle):
        gpu = self._ask("nvmlDeviceGetPciInfo", handle)
        return SimpleNamespace(busId=self._out(gpu.get("bus", "00000000:19:00.0")), domain=0, bus=0x19, device=0)

    def nvmlDeviceIsMigDeviceHandle(self, handle):
        self._ask("nvmlDeviceIsMigDeviceHandle", handle)
        return ctypes.c_uint(1 if "parent" in self.gpus[handle] else 0)

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle):
        gpu = self._ask("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", handle)
        if "parent" not in gpu:
            raise NVMLError(2)  # NVML_ERROR_INVALID_ARGUMENT: not a MIG handle
        return gpu["parent"]

    def nvmlDeviceGetAttributes(self, handle):
        gpu = self._ask("nvmlDeviceGetAttributes", handle)
        if "parent" not in gpu:
            raise NVMLError_NotSupported()  # "currently only supports MIG device handles"
        return SimpleNamespace(multiprocessorCount=gpu["sm_count"], memorySizeMB=gpu["memory"] // MIB)

    def nvmlDeviceGetNumGpuCores(self, handle):
        gpu = self._ask("nvmlDeviceGetNumGpuCores", handle)
        if "cores" not in gpu:
            raise NVMLError_NotSupported()
        return gpu["cores"]

    def nvmlDeviceGetCudaComputeCapability(self, handle):
        return self._ask("nvmlDeviceGetCudaComputeCapability", handle).get("cc", (9, 0))

    # ------------------------------------------------------------ memory

    def nvmlDeviceGetMemoryInfo(self, handle, version=None):
        gpu = self._ask("nvmlDeviceGetMemoryInfo", handle)
        total, allocated, reserved = gpu["memory"], gpu.get("allocated", 0), gpu.get("reserved", 0)
        if not version:
            return SimpleNamespace(total=total, free=total - allocated - reserved, used=allocated + reserved)
        if not self.v2_memory:
            raise NVMLError_FunctionNotFound()  # a driver without nvmlDeviceGetMemoryInfo_v2
        if version != self.nvmlMemory_v2:
            raise NVMLError(25)  # NVML_ERROR_ARGUMENT_VERSION_MISMATCH
        return SimpleNamespace(version=version, total=total, reserved=reserved,
                               free=total - allocated - reserved, used=allocated)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        gpu = self._ask("nvmlDeviceGetComputeRunningProcesses", handle)
        sentinel = self.NVML_VALUE_NOT_AVAILABLE_ulonglong.value
        out = []
        for pid, used in gpu.get("procs", []):
            if used is None and self.raw_sentinel:
                used = sentinel
            out.append(SimpleNamespace(pid=pid, usedGpuMemory=used, gpuInstanceId=0, computeInstanceId=0))
        return out

    # ------------------------------------------------------------ clocks and power

    def nvmlDeviceGetClockInfo(self, handle, clock_type):
        gpu = self._ask("nvmlDeviceGetClockInfo", handle)
        key = {self.NVML_CLOCK_SM: "sm_mhz", self.NVML_CLOCK_MEM: "mem_mhz"}.get(clock_type)
        if key and gpu.get(key):
            return self._script(handle, key)
        return gpu["clocks"][clock_type]

    def nvmlDeviceGetMaxClockInfo(self, handle, clock_type):
        return self._ask("nvmlDeviceGetMaxClockInfo", handle)["max_clocks"][clock_type]

    def nvmlDeviceGetClock(self, handle, clock_type, clock_id):
        gpu = self._ask("nvmlDeviceGetClock", handle)
        if clock_id != self.NVML_CLOCK_ID_APP_CLOCK_TARGET or "app_clocks" not in gpu:
            raise NVMLError_NotSupported()
        return gpu["app_clocks"][clock_type]

    def nvmlDeviceGetApplicationsClock(self, handle, clock_type):
        gpu = self._ask("nvmlDeviceGetApplicationsClock", handle)
        if "app_clocks" not in gpu:
            raise NVMLError_NotSupported()
        return gpu["app_clocks"][clock_type]

    def nvmlDeviceGetPowerManagementLimit(self, handle):
        return self._ask("nvmlDeviceGetPowerManagementLimit", handle)["power_mw"]

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        gpu = self._ask("nvmlDeviceGetEnforcedPowerLimit", handle)
        return gpu.get("enforced_power_mw", gpu["power_mw"])

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle):
        gpu = self._ask("nvmlDeviceGetPowerManagementDefaultLimit", handle)
        return gpu.get("default_power_mw", gpu["power_mw"])

    def nvmlDeviceGetPowerUsage(self, handle):
        self._ask("nvmlDeviceGetPowerUsage", handle)
        return self._script(handle, "power_usage_mw")

    def nvmlDeviceGetTemperature(self, handle, sensor):
        self._ask("nvmlDeviceGetTemperature", handle)
        if sensor != self.NVML_TEMPERATURE_GPU:
            raise NVMLError(2)  # NVML_ERROR_INVALID_ARGUMENT
        return self._script(handle, "temp_c")

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        self._ask("nvmlDeviceGetCurrentClocksEventReasons", handle)
        return self._script(handle, "reasons")

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle):
        self._ask("nvmlDeviceGetCurrentClocksThrottleReasons", handle)
        return self._script(handle, "reasons")

    # ------------------------------------------------------------ modes

    def nvmlDeviceGetEccMode(self, handle):
        self._ask("nvmlDeviceGetEccMode", handle)
        return [self.NVML_FEATURE_ENABLED, self.NVML_FEATURE_DISABLED]

    def nvmlDeviceGetMigMode(self, handle):
        self._ask("nvmlDeviceGetMigMode", handle)
        return [self.NVML_DEVICE_MIG_DISABLE, self.NVML_DEVICE_MIG_ENABLE]
