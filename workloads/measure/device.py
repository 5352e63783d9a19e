"""Which device a trial runs on, and the facts about it that go into `trials`.

CUDA facts come from torch; the driver version, the exact name, clocks, power
limit, ECC and MIG modes from NVML (`stepscope.workloads.measure.identity`) when `pynvml`
(nvidia-ml-py) and a driver are present. `device_row` makes the `devices` row. NVML numbers devices
physically, while torch numbers them after CUDA_VISIBLE_DEVICES (Ray sets it),
so the two are matched by UUID, never by index.
"""

from __future__ import annotations

import json
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
        "cpu_model": cpu_model(),
        "host_memory_bytes": host_memory_bytes(),
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
        nv = nvml_facts(uuid, nvml)
        if not nv and uuid and uuid.startswith("GPU-"):
            # A MIG instance: torch gives its UUID bare, NVML knows it as MIG-<uuid>.
            mig = "MIG-" + uuid.removeprefix("GPU-")
            nv = nvml_facts(mig, nvml)
            uuid = mig if nv else uuid
        # Without a UUID (an old torch) the devices row still needs a key, and the same one here.
        facts["device_uuid"] = uuid or f"GPU-unknown-{facts['host']}-{index}"
        facts.update(nv)
    else:
        facts["device_name"] = facts["cpu_model"]
        facts["device_uuid"] = cpu_uuid(facts["host"])
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
    """NVML's identity of the device with this UUID (`stepscope.workloads.measure.identity.nvml_identity`,
    under "identity"), and the driver version, name and memory it gives the trial row.

    Returns {} when NVML is not installed or not usable (no driver, a container
    without the management library) or does not know the UUID: those facts are
    then simply null.
    """
    from stepscope.workloads.measure.identity import identity_by_uuid

    if not uuid:
        return {}
    ident = identity_by_uuid(uuid, nvml)
    if not ident:
        return {}
    out: dict[str, Any] = {"identity": ident, "driver_version": ident.get("driver_version")}
    for key in ("device_name", "device_memory_bytes"):
        if ident.get(key) is not None:
            out[key] = ident[key]
    return out


def cpu_uuid(host: str) -> str:
    """The `device_uuid` of a host's CPU: a CPU has no UUID, the host names it."""
    return f"CPU-{host}"


def host_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return None


def device_row(facts: dict[str, Any], *, sweep_id: str, trial_id: str, node_id: str | None,
               observed_at: Any) -> dict[str, Any]:
    """The `devices` row for the device a trial ran on (`describe`'s facts)."""
    ident = facts.get("identity") or {}
    unavailable = ident.get("nvml_unavailable")
    cuda = facts["device_kind"] == "cuda"
    return {
        "sweep_id": sweep_id,
        "trial_id": trial_id,
        "device_uuid": facts["device_uuid"],
        "observed_at": observed_at,
        "device_kind": facts["device_kind"],
        "device_name": facts["device_name"],
        "gpu_variant": ident.get("gpu_variant"),
        "device_memory_bytes": facts["device_memory_bytes"],
        "sm_count": facts["sm_count"],
        "compute_capability": facts["compute_capability"],
        "pci_bus_id": ident.get("pci_bus_id"),
        "sm_clock_mhz": ident.get("sm_clock_mhz"),
        "mem_clock_mhz": ident.get("mem_clock_mhz"),
        "sm_clock_max_mhz": ident.get("sm_clock_max_mhz"),
        "mem_clock_max_mhz": ident.get("mem_clock_max_mhz"),
        "power_limit_w": ident.get("power_limit_w"),
        "ecc_enabled": ident.get("ecc_enabled"),
        "mig_enabled": ident.get("mig_enabled"),
        "driver_version": facts["driver_version"],
        "cuda_driver_version": ident.get("cuda_driver_version"),
        "cuda_version": facts["cuda_version"] if cuda else None,
        "cudnn_version": facts["cudnn_version"] if cuda else None,
        "torch_version": facts["torch_version"],
        "cpu_model": facts.get("cpu_model"),
        "cpu_count": facts["cpu_count"],
        "host_memory_bytes": facts.get("host_memory_bytes"),
        "host": facts["host"],
        "node_id": node_id,
        "nvml_unavailable": json.dumps(unavailable, sort_keys=True) if unavailable else None,
    }


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
