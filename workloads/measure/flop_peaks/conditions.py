"""What the measured peak's cache key holds of the device: its name and UUID, and every
condition that changes its matmul rate (threads and CPU affinity on a CPU; the power
limit and clocks on a GPU, the board's for a MIG slice).

Importing this module does not import torch: the callers hand it in.
"""

from __future__ import annotations

import os
from typing import Any

from stepscope.workloads.measure.nvml import device_handle, parent_handle


def device_identity(torch: Any, dev: Any) -> tuple[str, str | None]:
    """The device's name and UUID (torch's, for a GPU; the CPU model and None on a CPU)."""
    from stepscope.workloads.measure.device import cpu_model, torch_uuid

    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return str(props.name), torch_uuid(props)

    return cpu_model(), None


def conditions(torch: Any, dev: Any, uuid: str | None, nvml: Any = None) -> dict[str, Any]:
    """The conditions of the key: `gpu_conditions` on a GPU; torch's thread count and the
    CPU affinity size on a CPU."""
    if dev.type == "cuda":
        return gpu_conditions(uuid, nvml)
    return {"num_threads": int(torch.get_num_threads()), "cpu_affinity": _affinity_size()}


def _affinity_size() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count()


def gpu_conditions(uuid: str | None, nvml: Any = None) -> dict[str, Any]:
    """What NVML says sets a GPU's matmul rate: the enforced power limit (W), the
    application clocks (the target `nvidia-smi -ac` sets, MHz) and the maximum
    clocks, SM and memory. For a MIG slice they are the board's. Each None where
    NVML cannot say; all None without NVML. Clocks locked with `nvidia-smi -lgc`
    have no NVML getter here; they show in the sampler's clock columns."""
    out: dict[str, Any] = dict.fromkeys(
        ("power_limit_w", "sm_app_clock_mhz", "mem_app_clock_mhz", "sm_max_clock_mhz", "mem_max_clock_mhz"))
    if uuid is None:
        return out
    if uuid.startswith("GPU-"):  # torch names a MIG slice GPU-<uuid>; NVML knows it as MIG-<uuid>
        with device_handle(uuid, nvml) as found:
            if found is not None:
                return _read_conditions(*found, out)
        uuid = "MIG-" + uuid.removeprefix("GPU-")
    with device_handle(uuid, nvml) as found:
        return _read_conditions(*found, out) if found is not None else out


def _read_conditions(nvml: Any, handle: Any, out: dict[str, Any]) -> dict[str, Any]:
    board = parent_handle(nvml, handle) or handle
    sm, mem = getattr(nvml, "NVML_CLOCK_SM", None), getattr(nvml, "NVML_CLOCK_MEM", None)
    target = getattr(nvml, "NVML_CLOCK_ID_APP_CLOCK_TARGET", None)

    def ask(fn: str, *args: Any) -> Any:
        try:
            return getattr(nvml, fn)(board, *args)
        except Exception:  # unsupported on this board/driver: part of the key as None
            return None

    mw = ask("nvmlDeviceGetEnforcedPowerLimit")
    out["power_limit_w"] = mw / 1000.0 if mw is not None else None
    for key, clock in (("sm_app_clock_mhz", sm), ("mem_app_clock_mhz", mem)):
        value = ask("nvmlDeviceGetClock", clock, target) if target is not None else None
        out[key] = value if value is not None else ask("nvmlDeviceGetApplicationsClock", clock)
    out["sm_max_clock_mhz"] = ask("nvmlDeviceGetMaxClockInfo", sm)
    out["mem_max_clock_mhz"] = ask("nvmlDeviceGetMaxClockInfo", mem)
    return out
