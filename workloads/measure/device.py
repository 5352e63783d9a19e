"""Which device a trial runs on, and the facts about it that go into `trials`.

CUDA facts come from torch; the driver version, the exact name, clocks, power
limit, ECC and MIG modes from NVML (`stepscope.workloads.measure.identity`) when `pynvml`
(nvidia-ml-py) and a driver are present; `stepscope.workloads.measure.rows` makes the
`trials` and `devices` rows from them. NVML numbers devices
physically, while torch numbers them after CUDA_VISIBLE_DEVICES (Ray sets it),
so the two are matched by UUID, never by index.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
from typing import Any

from stepscope.errors import StepscopeError
from stepscope.workloads.measure.identity import identity_by_uuid
from stepscope.workloads.measure.records import DeviceFacts, NvmlIdentity


class DeviceError(StepscopeError, RuntimeError):
    """The device a spec asks for is not there (`device: cuda` where torch sees no GPU)."""


def pick_device(torch: Any, requested: str) -> Any:
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if requested == "cuda":
        raise DeviceError("device: cuda was asked for, but torch sees no CUDA device here")
    return torch.device("cpu")


def describe(torch: Any, device: Any, nvml: Any | None = None) -> DeviceFacts:
    """The facts about `device` (a torch.device) and its host that go into `trials` and
    `devices`. On CUDA, NVML's identity of the board where NVML knows it (`nvml`: the
    pynvml module or a stand-in, as `stepscope.workloads.measure.nvml.device_handle` takes)."""
    host = socket.gethostname()
    common = {
        "device_kind": device.type,
        "host": host,
        "num_threads": torch.get_num_threads(),
        "python_version": platform.python_version(),
        "torch_version": str(torch.__version__),
        "cpu_count": os.cpu_count(),
        "cuda_version": torch.version.cuda,
        "cudnn_version": _cudnn_version(torch),
        "cpu_model": cpu_model(),
        "host_memory_bytes": host_memory_bytes(),
    }
    if device.type != "cuda":
        return DeviceFacts(device_uuid=cpu_uuid(host), device_name=common["cpu_model"], **common)
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    uuid = torch_uuid(props)
    ident = identity_by_uuid(uuid, nvml) if uuid else None
    if ident is None and uuid and uuid.startswith("GPU-"):
        # A MIG instance: torch gives its UUID bare, NVML knows it as MIG-<uuid>.
        mig = "MIG-" + uuid.removeprefix("GPU-")
        ident = identity_by_uuid(mig, nvml)
        uuid = mig if ident is not None else uuid
    nv = ident or NvmlIdentity()
    return DeviceFacts(
        # Without a UUID (an old torch) the devices row still needs a key, and the same one here.
        device_uuid=uuid or f"GPU-unknown-{host}-{index}",
        device_name=nv.device_name or props.name,
        device_index=index,
        device_memory_bytes=nv.device_memory_bytes if nv.device_memory_bytes is not None else int(props.total_memory),
        sm_count=int(props.multi_processor_count),
        compute_capability=f"{props.major}.{props.minor}",
        driver_version=nv.driver_version,
        identity=ident,
        **common,
    )


def _cudnn_version(torch: Any) -> str | None:
    try:
        v = torch.backends.cudnn.version()
    except Exception:  # no cuDNN in this build
        return None
    return str(v) if v else None


def torch_uuid(props: Any) -> str | None:
    """The device's UUID as NVML spells it (`GPU-<uuid>`), from torch's device properties
    (`props.uuid` prints bare in some torch releases); None where torch has no UUID.
    The one spelling: the `devices` key, the NVML lookup and the peak cache all use it."""
    uuid = getattr(props, "uuid", None)
    if uuid is None:
        return None
    text = str(uuid)
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


def cpu_uuid(host: str) -> str:
    """The `device_uuid` of a host's CPU: a CPU has no UUID, the host names it."""
    return f"CPU-{host}"


def host_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or sys.platform
