"""One NVML session for one device: initialise, find the device by UUID, shut down.

NVML (`pynvml`, from nvidia-ml-py) numbers devices physically while torch numbers
them after CUDA_VISIBLE_DEVICES (Ray sets it per task), so a device is always
looked up by its UUID (`stepscope.workloads.measure.device.torch_uuid`), never by
index. Torch-free.

API reference: https://docs.nvidia.com/deploy/nvml-api/
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def device_handle(uuid: str | None, nvml: Any | None = None) -> Iterator[tuple[Any, Any] | None]:
    """Yield `(nvml, handle)` for the device with this UUID, NVML initialised around it.

    Yields None where there is nothing to ask: no UUID, pynvml not installed, no
    driver or no libnvidia-ml (a container without the management library), or a
    UUID NVML does not know. `nvml` is the pynvml module or a stand-in with its API
    (the tests' fakes); by default pynvml is imported here.
    """
    if not uuid:
        yield None
        return
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            yield None
            return
    try:
        nvml.nvmlInit()
    except Exception:  # no driver, no libnvidia-ml: no facts, not an error
        yield None
        return
    try:
        try:
            handle = nvml.nvmlDeviceGetHandleByUUID(uuid)
        except Exception:  # an unknown UUID
            handle = None
        yield (nvml, handle) if handle is not None else None
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def parent_handle(nvml: Any, handle: Any) -> Any | None:
    """The whole board's handle when `handle` is a MIG instance's, else None.

    A MIG device handle (what `nvmlDeviceGetHandleByUUID("MIG-...")` gives) answers
    for its slice: its memory and SMs. The board's power limit, clocks and
    temperature belong to the parent (nvmlDeviceGetDeviceHandleFromMigDeviceHandle).
    None too where the driver or binding cannot say (no MIG support, old NVML).
    """
    if not is_mig_handle(nvml, handle):
        return None
    try:
        return nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle)
    except Exception:  # NVMLError_NotSupported, an old binding: no parent to ask
        return None


def is_mig_handle(nvml: Any, handle: Any) -> bool | None:
    """nvmlDeviceIsMigDeviceHandle as a bool; None where NVML cannot say.

    pynvml returns the ctypes c_uint itself (not its `.value`), so both are read.
    """
    try:
        flag = nvml.nvmlDeviceIsMigDeviceHandle(handle)
    except Exception:  # pre-MIG driver or binding
        return None
    return bool(getattr(flag, "value", flag))


def not_available(nvml: Any) -> int:
    """NVML's "value not available" for an unsigned 64-bit field (NVML_VALUE_NOT_AVAILABLE,
    all bits set): pynvml's `NVML_VALUE_NOT_AVAILABLE_ulonglong.value`, 2**64 - 1."""
    sentinel = getattr(nvml, "NVML_VALUE_NOT_AVAILABLE_ulonglong", None)
    value = getattr(sentinel, "value", None)
    return int(value) if isinstance(value, int) else 2**64 - 1


def device_used_bytes(nvml: Any, handle: Any) -> int | None:
    """Memory allocated on the device by every process, in bytes, without the driver's reserve.

    nvmlDeviceGetMemoryInfo's v1 struct counts the memory the driver and firmware
    reserve for themselves as `used` (several hundred MB on an idle A100); the v2
    struct (`version=nvmlMemory_v2`, drivers that have nvmlDeviceGetMemoryInfo_v2) reports that as
    `reserved` and leaves it out of `used`. v2 where the binding and driver have it,
    else v1; None when neither answers.
    https://docs.nvidia.com/deploy/nvml-api/structnvmlMemory__v2__t.html
    """
    version = getattr(nvml, "nvmlMemory_v2", None)
    if version is not None:
        try:
            return int(nvml.nvmlDeviceGetMemoryInfo(handle, version=version).used)
        # TypeError: a binding without the `version` argument; NVMLError_FunctionNotFound
        # or _ArgumentVersionMismatch: a driver older than the v2 call.
        except Exception:
            pass
    try:
        return int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception:
        return None
