"""The datasheet peak of the device a trial ran on: its exact variant, and on a MIG slice
the slice's share of the board's SMs.

On a MIG slice the board's figure is scaled to the slice's share of the board's SMs
(`device_datasheet_peak`): an A100's 1g.5gb slice has 14 of its 108 SMs (MIG user guide,
"Supported MIG Profiles": https://docs.nvidia.com/datacenter/tesla/mig-user-guide/), and
measured against the whole board its MFU would read 108 / 14 = 7.7x low. NVML counts the
board's SMs; `BOARD_SMS` (with sources) is the fallback where it cannot.

Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from stepscope.workloads.measure.flop_peaks.datasheet import (
    A30_DATASHEET,
    AMPERE_WHITEPAPER,
    GH200_PAGE,
    H20_REPORT,
    H100_PAGE,
    H100_WHITEPAPER,
    H200_PAGE,
    H800_NOTE_URL,
    datasheet_peak,
)
from stepscope.workloads.measure.flop_peaks.precisions import canonical_precision
from stepscope.workloads.measure.identity import gpu_variant
from stepscope.workloads.measure.records import DeviceFacts


@dataclass(frozen=True, slots=True)
class BoardSMs:
    """SMs of a whole board (what its datasheet peak is made of), by family and form
    (None: every form of the family). The fallback where NVML cannot count them."""

    family: str
    form_factor: str | None
    sm_count: int
    source: str
    verified: bool = False  # True: read in a copy of `source` itself
    note: str = ""


BOARD_SMS: tuple[BoardSMs, ...] = (
    # Ampere whitepaper: "The A100 Tensor Core GPU implementation ... 108 SMs" (every A100 form).
    BoardSMs("A100", None, 108, AMPERE_WHITEPAPER,
             note="seen quoted at https://glennklockwood.com/garden/processors/A100; the whitepaper not opened"),
    BoardSMs("A30", None, 56, A30_DATASHEET, note="derived: 3,584 FP32 cores / 64 per GA100 SM"),
    # H100 whitepaper, Table 1: "SMs 132 | 114" (SXM5 | PCIe); the NVL board enables 132.
    BoardSMs("H100", "SXM", 132, H100_WHITEPAPER),
    BoardSMs("H100", "PCIe", 114, H100_WHITEPAPER),
    BoardSMs("H100", "NVL", 132, H100_PAGE),
    BoardSMs("H200", None, 132, H200_PAGE, note="the H100 SXM's GH100 configuration"),
    BoardSMs("H800", "SXM", 132, H800_NOTE_URL, note="the H100 SXM's configuration"),
    BoardSMs("H800", "PCIe", 114, H800_NOTE_URL, note="the H100 PCIe's configuration"),
    BoardSMs("H20", None, 78, H20_REPORT, note="as reported from a benchmark listing"),
    BoardSMs("GH200", None, 132, GH200_PAGE, note="the H100 SXM's configuration"),
    BoardSMs("B200", None, 148, "https://hmc-tech.com/gpus/nvidia-b200-vs-nvidia-b100", note="third-party listing"),
)


def board_sm_count(label: str) -> BoardSMs | None:
    """The `BOARD_SMS` entry for a variant label ("H100-SXM-80GB"), or None."""
    model = gpu_variant(label)
    for entry in BOARD_SMS:
        if entry.family == model.family and entry.form_factor in (None, model.form_factor):
            return entry
    return None


@dataclass(frozen=True, slots=True)
class DatasheetPeak:
    """The dense datasheet peak of the device a trial ran on, in one precision.

    `tflops` is for THIS device: the whole board's figure (`board_tflops`, the
    table's) times `fraction`, 1.0 on a whole board, the slice's share of the
    board's SMs on a MIG instance. `note` says how the fraction was found."""

    variant: str  # GpuModel label, e.g. "A100-SXM-40GB"
    tflops: float  # dense TFLOP/s this device can reach on the datasheet's terms
    board_tflops: float  # the whole board's dense figure
    fraction: float  # tflops / board_tflops
    source: str  # the table entry's source URL
    note: str = ""


def device_datasheet_peak(facts: DeviceFacts, precision: str, *, allow_derived: bool = True) -> DatasheetPeak | None:
    """The dense datasheet peak of the device in `facts` (`device.describe`'s), or None.

    The variant: NVML's (`facts.identity.gpu_variant`), else read from the device
    name, memory and power limit (default limit first) as `identity.gpu_variant`
    does. On a MIG instance (an `is_mig_instance` identity, a MIG- UUID, or a
    "... MIG 1g.10gb" name) the board's figure is scaled by slice SMs / board SMs:
    the slice's SMs are `facts.sm_count` (torch counts the slice's), the board's
    NVML's `identity.mig_parent_sm_count`, else `BOARD_SMS`. A MIG instance whose
    share cannot be found gives None, not the whole board's figure.

    None on a CPU, for a board not in the table, or for a precision the board has
    no figure for. Raises PeakError for a precision stepscope does not know.
    """
    p = canonical_precision(precision)
    if facts.device_kind != "cuda":
        return None
    mig = _is_mig(facts)
    label = _facts_variant(facts, mig)
    peak = datasheet_peak(label, p, allow_derived=allow_derived) if label else None
    if peak is None:
        return None
    if not mig:
        return DatasheetPeak(label, peak.tflops, peak.tflops, 1.0, peak.source, peak.note)
    ident = facts.identity
    board, basis = (ident.mig_parent_sm_count if ident else None), "NVML"
    if not board:
        entry = board_sm_count(label)
        board, basis = (entry.sm_count, f"table: {entry.source}") if entry else (None, "")
    slice_sms = facts.sm_count
    if not board or not slice_sms or slice_sms > board:
        return None
    fraction = slice_sms / board
    note = f"MIG slice: {slice_sms} of the board's {board} SMs ({basis})"
    return DatasheetPeak(label, peak.tflops * fraction, peak.tflops, fraction, peak.source,
                         f"{note}; {peak.note}" if peak.note else note)


def _is_mig(facts: DeviceFacts) -> bool:
    ident = facts.identity
    if ident is not None and ident.is_mig_instance is not None:
        return ident.is_mig_instance
    return facts.device_uuid.startswith("MIG-") or " MIG " in (facts.device_name or "")


def device_variant(facts: DeviceFacts) -> str | None:
    """The exact variant label of the device in `facts` (`device.describe`'s), or None:
    NVML's, else read from the name, memory and power limits (the default first) as
    `identity.gpu_variant` does; an unknown board is None."""
    return _facts_variant(facts, _is_mig(facts))


def _facts_variant(facts: DeviceFacts, mig: bool) -> str | None:
    ident = facts.identity  # NVML's, read once by stepscope.workloads.measure.device.describe
    if ident is not None and ident.gpu_variant:
        return ident.gpu_variant
    if not facts.device_name:
        return None
    power = ident.power_limit_w if ident is not None else None
    default = ident.power_limit_default_w if ident is not None else None
    # A MIG slice's memory is its share of the board's: it would name another variant.
    memory = None if mig else facts.device_memory_bytes
    try:
        return gpu_variant(facts.device_name, memory, power, power_limit_default_w=default).label
    except Exception:  # an unknown board: no datasheet row, the measured peak still applies
        return None

