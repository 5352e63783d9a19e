"""Which exact GPU this is, from the facts NVML gives. Torch-free.

A peak-FLOPS figure is only as right as the variant it is looked up for: an
H100 SXM (989 dense BF16 TFLOP/s), an H100 PCIe (756) and an H100 NVL (835)
differ by a third, and all three report `sm_count` 132 or 114 and compute
capability 9.0 to torch. NVML's device name usually says which one it is
("NVIDIA H100 80GB HBM3" is the SXM5 board, "NVIDIA H100 PCIe", "NVIDIA H100
NVL"); where it does not ("NVIDIA H200", a bare "NVIDIA A100"), the board's
power limit and memory size decide, as `gpu_variant` documents.

`nvml_identity` collects those facts for one NVML handle. Every query is
guarded: an older driver, a GPU without ECC or MIG, or a container without
permission answers with an NVMLError, and that field is then None with the
reason kept under `nvml_unavailable`, never an exception.

NVML API reference: https://docs.nvidia.com/deploy/nvml-api/group__nvmlDeviceQueries.html
Python binding (nvidia-ml-py, module `pynvml`): https://pypi.org/project/nvidia-ml-py/
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from stepscope.workloads.measure.nvml import device_handle, is_mig_handle, parent_handle
from stepscope.workloads.measure.records import NvmlIdentity

FORM_FACTORS = ("SXM", "PCIe", "NVL")

# How the form factor was decided, strongest first.
BASES = ("name", "power", "memory", "default", "single")

# Marketed memory sizes (GB as NVIDIA prints them; NVML reports a little less
# than this many GiB once the driver has reserved its share). A size in a name
# that is not one of its family's is not the GPU's memory: "NVIDIA GH200 480GB"
# names the Grace CPU's LPDDR5X, beside 96 GB HBM3 (144 GB HBM3e) on the GPU.
# B200: 180 GB in HGX B200 (https://www.nvidia.com/en-us/data-center/hgx/), 192 GB
# as announced; GB200: 186 GB per GPU in GB200 NVL72
# (https://www.nvidia.com/en-us/data-center/gb200-nvl72/); H20: 96 GB HBM3, 141 GB later.
_MEMORY_GB = {
    "GB200": (186, 192),
    "GH200": (96, 144),
    "B200": (180, 192),
    "H200": (141,),
    "H100": (64, 80, 94, 96),
    "H800": (80,),
    "H20": (96, 141),
    "A100": (40, 80),
    "A40": (48,),
    "A30": (24,),
    "V100": (16, 32),
    "L40S": (48,),
    "L40": (48,),
    "L4": (24,),
    "A10G": (24,),
    "A10": (24,),
    "T4": (16,),
    "RTX4090": (24,),
}

# Families whose NVML name is checked in this order (GB200 and GH200 before B200
# and H200, H200 before H20, L40S before L40 before L4, A10G before A10), each
# with the pattern that finds it in the name.
_FAMILIES = (
    ("GB200", r"\bGB200\b"),
    ("GH200", r"\bGH200\b"),
    ("B200", r"\bB200\b"),
    ("H200", r"\bH200\b"),
    ("H100", r"\bH100\b"),
    ("H800", r"\bH800\b"),
    ("H20", r"\bH20\b"),
    ("A100", r"\bA100\b"),
    ("A10G", r"\bA10G\b"),
    ("A10", r"\bA10\b"),
    ("A30", r"\bA30\b"),
    ("A40", r"\bA40\b"),
    ("L40S", r"\bL40S\b"),
    ("L40", r"\bL40\b"),
    ("L4", r"\bL4\b"),
    ("V100", r"\bV100\b"),
    ("T4", r"\bT4\b"),
    ("RTX4090", r"\bRTX ?4090\b"),
)

# Families sold in one board form only: the form factor is not a dimension for them.
# B200 ships on HGX/DGX B200 (SXM) boards, GB200 and GH200 as superchips, H20 on HGX
# boards; A30, A40, L40, L40S, L4, A10, A10G and T4 are PCIe cards only.
_SINGLE_FORM = {"GB200", "GH200", "B200", "H20", "A30", "A40", "L40S", "L40", "L4", "A10G", "A10", "T4", "RTX4090"}


@dataclass(frozen=True, slots=True)
class GpuModel:
    """One GPU variant. `label` ("H100-SXM-80GB") is the key of the peak table."""

    family: str
    form_factor: str | None
    memory_gb: int | None
    basis: str = "name"
    label: str = field(init=False)

    def __post_init__(self) -> None:
        if not self.family or not re.fullmatch(r"[A-Za-z0-9]+", self.family):
            raise ValueError(f"family: {self.family!r} must be letters and digits, e.g. 'H100'")
        if self.form_factor is not None and self.form_factor not in FORM_FACTORS:
            raise ValueError(f"form_factor: {self.form_factor!r} is not one of {', '.join(FORM_FACTORS)} or None")
        if self.memory_gb is not None and self.memory_gb <= 0:
            raise ValueError(f"memory_gb: {self.memory_gb!r} must be a positive number of GB, or None")
        if self.basis not in BASES:
            raise ValueError(f"basis: {self.basis!r} is not one of {', '.join(BASES)}")
        parts = [self.family]
        if self.form_factor:
            parts.append(self.form_factor)
        if self.memory_gb:
            parts.append(f"{self.memory_gb}GB")
        object.__setattr__(self, "label", "-".join(parts))


def gpu_variant(name: str | bytes, memory_bytes: int | None = None, power_limit_w: float | None = None,
                *, power_limit_default_w: float | None = None) -> GpuModel:
    """The exact variant behind an NVML device name.

    The name decides whenever it can: "SXM" (A100-SXM4, V100-SXM2), "PCIe"/"PCIE",
    "NVL" in it name the form; "NVIDIA H100 80GB HBM3" is the SXM5 board (the
    PCIe H100 carries HBM2e and reports "NVIDIA H100 PCIe" or "... HBM2e").
    `basis` on the result says what decided.

    Where the name is ambiguous, the board's power limit in watts decides, then
    the memory. The DEFAULT limit (`power_limit_default_w`, NVML's
    nvmlDeviceGetPowerManagementDefaultLimit) is the board's own: an
    administrator's cap (`nvidia-smi -pl 500` on a 700 W H200 SXM) lowers the
    current limit (`power_limit_w`, nvmlDeviceGetPowerManagementLimit) but not
    the default, and read as the board's it would make that SXM an NVL. The
    current limit decides only where the default is unknown (None).

    - H100 and H800: >= 450 W is SXM (700 W board); below that, >= 90 GB is NVL
      (H100 NVL: 94 GB, 350-400 W), else PCIe (80 GB, 300-350 W). No power and
      80 GB: SXM, basis "default" (SXM and PCIe both have 80 GB; HGX systems
      are the common case).
    - H200: > 600 W is SXM (700 W); <= 600 W is NVL (600 W max). No power: SXM,
      basis "default".
    - A100: > 300 W is SXM (400 W); <= 300 W is PCIe (250 W 40 GB, 300 W 80 GB).
    - V100: > 250 W is SXM2/SXM3 (300/350 W); <= 250 W is PCIe.

    Thresholds from the boards' TDPs: H100 https://www.nvidia.com/en-us/data-center/h100/
    and https://nvdam.widen.net/s/95bdhpsgrs/nvidia_h100_tensor_core_gpu_architecture_whitepaper_v1.03;
    H200 https://www.nvidia.com/en-us/data-center/h200/; A100
    https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf;
    V100 https://images.nvidia.com/content/technologies/volta/pdf/volta-v100-datasheet-update-us-1165301-r5.pdf

    Memory is read from the name when it carries one ("A100-SXM4-40GB"), else
    rounded from `memory_bytes` to the nearest marketed size. A MIG suffix
    ("... MIG 1g.10gb") is ignored: the variant is the parent board's.
    """
    text = name.decode() if isinstance(name, bytes) else str(name)
    text = text.split(" MIG ")[0].strip()
    upper = text.upper()
    family = _family(text)
    memory_gb = _memory_from_name(family, upper) or _memory_from_bytes(family, memory_bytes)
    power_w = power_limit_default_w if power_limit_default_w is not None else power_limit_w

    if family in _SINGLE_FORM:
        return GpuModel(family, None, memory_gb, "single")
    if "NVL" in upper:
        return GpuModel(family, "NVL", memory_gb, "name")
    if "SXM" in upper:
        return GpuModel(family, "SXM", memory_gb, "name")
    if "PCIE" in upper or (family in ("H100", "H800") and "HBM2E" in upper):
        return GpuModel(family, "PCIe", memory_gb, "name")
    if family in ("H100", "H800") and "HBM3" in upper:
        return GpuModel(family, "SXM", memory_gb, "name")
    form, basis = _ambiguous_form(family, memory_gb, power_w)
    return GpuModel(family, form, memory_gb, basis)


def _family(text: str) -> str:
    for family, pattern in _FAMILIES:
        if re.search(pattern, text, flags=re.IGNORECASE):
            return family
    # An unknown board keeps its own name, e.g. "NVIDIA RTX A6000" -> "RTXA6000".
    stripped = re.sub(r"^(NVIDIA\s+)?(Tesla\s+|GeForce\s+)?", "", text, flags=re.IGNORECASE)
    return re.sub(r"[^A-Za-z0-9]", "", stripped) or "unknown"


def _memory_from_name(family: str, upper: str) -> int | None:
    m = re.search(r"(\d+)\s*GB", upper)
    if not m:
        return None
    gb = int(m.group(1))
    sizes = _MEMORY_GB.get(family)
    return gb if sizes is None or gb in sizes else None


def _memory_from_bytes(family: str, memory_bytes: int | None) -> int | None:
    if not memory_bytes or memory_bytes <= 0:
        return None
    gib = memory_bytes / 2**30
    sizes = _MEMORY_GB.get(family)
    if sizes:
        nearest = min(sizes, key=lambda s: abs(s - gib))
        # The driver reserves a few per cent; anything further off is another board.
        if abs(nearest - gib) <= 0.1 * nearest:
            return nearest
    return max(1, round(gib))


def _ambiguous_form(family: str, memory_gb: int | None, power_w: float | None) -> tuple[str | None, str]:
    if family in ("H100", "H800"):
        if power_w is not None and power_w >= 450:
            return "SXM", "power"
        if memory_gb is not None and memory_gb >= 90:
            return "NVL", "memory"
        if power_w is not None:
            return "PCIe", "power"
        return "SXM", "default"
    if family == "H200":
        if power_w is None:
            return "SXM", "default"
        return ("SXM" if power_w > 600 else "NVL"), "power"
    if family == "A100":
        if power_w is None:
            return "SXM", "default"
        return ("SXM" if power_w > 300 else "PCIe"), "power"
    if family == "V100":
        if power_w is None:
            return "SXM", "default"
        return ("SXM" if power_w > 250 else "PCIe"), "power"
    return None, "default"


def nvml_identity(handle: Any, nvml: Any) -> NvmlIdentity:
    """Everything NVML says about one device, each field None where NVML cannot say.

    `nvml` is the initialised `pynvml` module (or a stand-in with its API);
    constants such as NVML_CLOCK_SM are read from it, never assumed. Fields of the
    `NvmlIdentity` it returns:

    - device_name, device_uuid, device_memory_bytes: the device's own (a MIG
      slice's name, UUID and memory for a MIG handle)
    - pci_bus_id
    - sm_clock_mhz, mem_clock_mhz: current clocks (nvmlDeviceGetClockInfo)
    - sm_clock_max_mhz, mem_clock_max_mhz: nvmlDeviceGetMaxClockInfo
    - power_limit_w: nvmlDeviceGetPowerManagementLimit (milliwatts / 1000);
      nvmlDeviceGetEnforcedPowerLimit where the first is unsupported
    - power_limit_default_w: nvmlDeviceGetPowerManagementDefaultLimit
    - ecc_enabled, ecc_pending: nvmlDeviceGetEccMode (current, pending)
    - mig_enabled, mig_pending: nvmlDeviceGetMigMode (current, pending)
    - driver_version: nvmlSystemGetDriverVersion
    - cuda_driver_version: nvmlSystemGetCudaDriverVersion, as "12.4"
    - gpu_variant: gpu_variant(...).label from the name, the board's memory and
      its default power limit; None without a name
    - is_mig_instance: nvmlDeviceIsMigDeviceHandle; where the call is missing,
      whether the UUID is a MIG- one
    - mig_parent_sm_count: for a MIG slice, the whole board's SM count
      (`_board_sm_count`); None on a whole board or where NVML cannot say
    - nvml_unavailable: {field: NVML's reason} for every field left None by an error

    For a MIG handle, what belongs to the board (PCI id, clocks, power limits,
    ECC and MIG modes, and the memory that tells the variant) is read from the
    parent handle (nvmlDeviceGetDeviceHandleFromMigDeviceHandle): NVML answers
    most of those queries only for the parent.
    """
    missing: dict[str, str] = {}

    def ask(key: str, fn_name: str, *args: Any) -> Any:
        try:
            return getattr(nvml, fn_name)(*args)
        # Any failure here is a fact about this driver/board, not a bug to raise:
        # NVMLError_NotSupported (no ECC on a GeForce), NVMLError_FunctionNotFound (old
        # driver), NVMLError_NoPermission (container), AttributeError (old binding).
        # The reason is kept, so nothing is dropped silently.
        except Exception as err:
            missing[key] = str(err) or type(err).__name__
            return None

    parent = parent_handle(nvml, handle)
    board = parent if parent is not None else handle
    sm, mem = getattr(nvml, "NVML_CLOCK_SM", None), getattr(nvml, "NVML_CLOCK_MEM", None)
    out: dict[str, Any] = {
        "device_name": _opt_text(ask("device_name", "nvmlDeviceGetName", handle)),
        "device_uuid": _opt_text(ask("device_uuid", "nvmlDeviceGetUUID", handle)),
        "device_memory_bytes": _opt_int(getattr(ask("device_memory_bytes", "nvmlDeviceGetMemoryInfo", handle), "total", None)),
        "pci_bus_id": _bus_id(ask("pci_bus_id", "nvmlDeviceGetPciInfo", board)),
        "sm_clock_mhz": _opt_int(ask("sm_clock_mhz", "nvmlDeviceGetClockInfo", board, sm)),
        "mem_clock_mhz": _opt_int(ask("mem_clock_mhz", "nvmlDeviceGetClockInfo", board, mem)),
        "sm_clock_max_mhz": _opt_int(ask("sm_clock_max_mhz", "nvmlDeviceGetMaxClockInfo", board, sm)),
        "mem_clock_max_mhz": _opt_int(ask("mem_clock_max_mhz", "nvmlDeviceGetMaxClockInfo", board, mem)),
        "driver_version": _opt_text(ask("driver_version", "nvmlSystemGetDriverVersion")),
        "cuda_driver_version": _cuda_version(ask("cuda_driver_version", "nvmlSystemGetCudaDriverVersion")),
    }
    milliwatts = ask("power_limit_w", "nvmlDeviceGetPowerManagementLimit", board)
    if milliwatts is None:
        milliwatts = ask("power_limit_w", "nvmlDeviceGetEnforcedPowerLimit", board)
        if milliwatts is not None:
            missing.pop("power_limit_w", None)
    out["power_limit_w"] = milliwatts / 1000.0 if milliwatts is not None else None
    default_mw = ask("power_limit_default_w", "nvmlDeviceGetPowerManagementDefaultLimit", board)
    out["power_limit_default_w"] = default_mw / 1000.0 if default_mw is not None else None

    enabled = getattr(nvml, "NVML_FEATURE_ENABLED", 1)
    out["ecc_enabled"], out["ecc_pending"] = _pair(ask("ecc_enabled", "nvmlDeviceGetEccMode", board), enabled)
    mig_on = getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1)
    out["mig_enabled"], out["mig_pending"] = _pair(ask("mig_enabled", "nvmlDeviceGetMigMode", board), mig_on)
    for key in ("ecc", "mig"):
        if f"{key}_enabled" in missing:
            missing[f"{key}_pending"] = missing[f"{key}_enabled"]

    is_mig = is_mig_handle(nvml, handle)
    if is_mig is None and out["device_uuid"]:
        is_mig = out["device_uuid"].startswith("MIG-")
    out["is_mig_instance"] = is_mig
    out["mig_parent_sm_count"] = _board_sm_count(nvml, parent) if parent is not None else None
    if parent is not None and out["mig_parent_sm_count"] is None:
        missing["mig_parent_sm_count"] = "NVML gives no SM count for the parent board"

    name = out["device_name"]
    # A MIG slice's own memory is a fraction of the board's: the variant reads the board's.
    board_memory = out["device_memory_bytes"]
    if parent is not None:
        try:
            board_memory = int(nvml.nvmlDeviceGetMemoryInfo(parent).total)
        except Exception:  # the variant is then read from the name and power alone
            board_memory = None
    out["gpu_variant"] = gpu_variant(
        name, board_memory, out["power_limit_w"], power_limit_default_w=out["power_limit_default_w"]
    ).label if name else None
    return NvmlIdentity(**out, nvml_unavailable=missing)


# FP32 cores per SM by compute capability, for the MIG-capable architectures: the
# "32-bit floating-point add, multiply, multiply-add" row of the CUDA C++
# Programming Guide's throughput table (results per clock cycle per multiprocessor):
# 64 on 8.0 (A100, A30), 128 on 9.0 (H100, H200, H800, H20, GH200) and 10.0 (B200, GB200).
# https://docs.nvidia.com/cuda/cuda-c-programming-guide/index.html#arithmetic-instructions
_FP32_CORES_PER_SM = {(8, 0): 64, (9, 0): 128, (10, 0): 128}


def _board_sm_count(nvml: Any, board: Any) -> int | None:
    """SMs of a whole board, from NVML: nvmlDeviceGetAttributes where the driver answers
    it for a board (the NVML reference says it "currently only supports MIG device
    handles"), else nvmlDeviceGetNumGpuCores divided by the FP32 cores per SM of the
    board's compute capability. None where neither works."""
    try:
        count = int(nvml.nvmlDeviceGetAttributes(board).multiprocessorCount)
        if count > 0:
            return count
    except Exception:  # NotSupported on a parent handle (see above), an old binding
        pass
    try:
        cores = int(nvml.nvmlDeviceGetNumGpuCores(board))
        per_sm = _FP32_CORES_PER_SM.get(tuple(nvml.nvmlDeviceGetCudaComputeCapability(board)))
    except Exception:  # a driver before nvmlDeviceGetNumGpuCores
        return None
    return cores // per_sm if per_sm and cores > 0 and cores % per_sm == 0 else None


def identity_by_uuid(uuid: str, nvml: Any | None = None) -> NvmlIdentity | None:
    """`nvml_identity` for the device with this UUID, initialising NVML around it.

    Returns None where NVML is not installed, has no driver, or does not know the
    UUID (torch numbers devices after CUDA_VISIBLE_DEVICES, NVML physically, so
    the UUID is the only safe join; see `stepscope.workloads.measure.nvml`).
    """
    with device_handle(uuid, nvml) as found:
        return nvml_identity(found[1], found[0]) if found else None


def _opt_text(value: Any) -> str | None:
    if value is None:
        return None
    # pynvml before 11.5 returns bytes, later releases str.
    return value.decode() if isinstance(value, bytes) else str(value)


def _opt_int(value: Any) -> int | None:
    return int(value) if value is not None else None


def _bus_id(info: Any) -> str | None:
    if info is None:
        return None
    # nvmlPciInfo_t.busId replaced busIdLegacy in NVML 9.0; both are char arrays.
    value = getattr(info, "busId", None) or getattr(info, "busIdLegacy", None)
    return _opt_text(value) or None


def _cuda_version(value: Any) -> str | None:
    # NVML encodes CUDA 12.4 as 12040 (1000 * major + 10 * minor).
    if value is None:
        return None
    v = int(value)
    return f"{v // 1000}.{(v % 1000) // 10}"


def _pair(value: Any, on: int) -> tuple[bool | None, bool | None]:
    if value is None:
        return None, None
    current, pending = value
    return current == on, pending == on
