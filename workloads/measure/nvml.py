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
