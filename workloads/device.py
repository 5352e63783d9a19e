"""Which device a trial runs on, and the facts about it that go into `trials`.

CUDA facts come from torch; the driver version and the device UUID from NVML
when `pynvml` (nvidia-ml-py) and a driver are present. NVML numbers devices
physically, while torch numbers them after CUDA_VISIBLE_DEVICES (Ray sets it),
so the two are matched by UUID, never by index.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
from typing import Any


class DeviceError(RuntimeError):
    pass


def pick_device(torch: Any, requested: str) -> Any:
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if requested == "cuda":
        raise DeviceError("device: cuda was asked for, but torch sees no CUDA device here")
    return torch.device("cpu")


def describe(torch: Any, device: Any, nvml: Any | None = None) -> dict[str, Any]:
    """The device columns of a `trials` row."""
    facts: dict[str, Any] = {
        "device_kind": device.type,
        "device_name": None,
        "device_index": None,
        "device_uuid": None,
        "device_memory_bytes": None,
        "sm_count": None,
        "compute_capability": None,
        "driver_version": None,
        "cpu_count": os.cpu_count(),
        "num_threads": torch.get_num_threads(),
        "host": socket.gethostname(),
        "python_version": platform.python_version(),
        "torch_version": str(torch.__version__),
        "cuda_version": torch.version.cuda,
        "cudnn_version": _cudnn_version(torch),
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        facts.update(
            device_name=props.name,
            device_index=index,
            device_memory_bytes=int(props.total_memory),
            sm_count=int(props.multi_processor_count),
            compute_capability=f"{props.major}.{props.minor}",
        )
        uuid = _torch_uuid(props)
        facts["device_uuid"] = uuid
        facts.update(nvml_facts(uuid, nvml))
    else:
        facts["device_name"] = cpu_model()
    return facts


def _cudnn_version(torch: Any) -> str | None:
    try:
        v = torch.backends.cudnn.version()
    except Exception:  # no cuDNN in this build
        return None
    return str(v) if v else None


def _torch_uuid(props: Any) -> str | None:
    uuid = getattr(props, "uuid", None)
    if uuid is None:
        return None
    text = str(uuid)
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


def nvml_facts(uuid: str | None, nvml: Any | None = None) -> dict[str, Any]:
    """Driver version and NVML's name and memory for the device with this UUID.

    Returns {} when NVML is not installed or not usable (no driver, a container
    without the management library): those facts are then simply null.
    """
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return {}
    try:
        nvml.nvmlInit()
    except Exception:
        return {}
    try:
        out: dict[str, Any] = {"driver_version": _text(nvml.nvmlSystemGetDriverVersion())}
        if uuid:
            handle = nvml.nvmlDeviceGetHandleByUUID(uuid)
            out["device_name"] = _text(nvml.nvmlDeviceGetName(handle))
            out["device_memory_bytes"] = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
        return out
    except Exception:
        return {}
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def _text(value: Any) -> str:
    # Older pynvml releases return bytes, newer ones str.
    return value.decode() if isinstance(value, bytes) else str(value)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or sys.platform
