"""Peak matmul throughput: the datasheet's, and the one measured on this node.

MFU is achieved FLOP/s over a peak, so the peak must be (1) for the exact
variant (an H100 SXM is 989 dense BF16 TFLOP/s, an H100 PCIe 756, an H100 NVL
835), (2) for the precision the step ran in, and (3) dense. NVIDIA's product
pages and datasheets print Tensor Core rows "with sparsity" (2:4 structured
sparsity, a rate only reached when half of every weight block is zero); a
dense training step can never reach those, so every such figure is halved
here, and each entry keeps the number as printed next to the dense one.

Stepscope precisions map to datasheet rows as follows: fp32 -> FP32
(non-tensor, CUDA cores: stepscope's fp32 turns TF32 off), tf32 -> TF32 Tensor
Core, bf16 and amp_bf16 -> BF16 Tensor Core, fp16 and amp_fp16 -> FP16 Tensor
Core with FP32 accumulate (what PyTorch's half GEMMs use).

On a MIG slice the board's figure is scaled to the slice's share of the
board's SMs (`device_datasheet_peak`): an A100's 1g.5gb slice has 14 of its 108
SMs (MIG user guide, "Supported MIG Profiles":
https://docs.nvidia.com/datacenter/tesla/mig-user-guide/), and measured against
the whole board its MFU would read 108 / 14 = 7.7x low.

`measured_matmul_peak` times square matmuls on the device itself, for long
enough to reach steady clocks, and caches the median per node and per every
condition that changes it (threads and CPU affinity on a CPU; the power limit,
clocks and MIG slice on a GPU), as a peak the hardware demonstrably reaches, to
set beside the datasheet's. A cached figure is revalidated: it expires after
`peak_max_age_s` (7 days, $STEPSCOPE_PEAK_MAX_AGE_DAYS), and `checked_matmul_peak`
measures it again when a step ran faster than it allows (`CachedPeak.tolerance`),
flagging a rate that stays above it (`PeakCheck.flag`).

Importing this module does not import torch.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import socket
import statistics
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter_ns
from typing import Any

from stepscope.errors import StepscopeError
from stepscope.workloads.measure.identity import GpuModel, gpu_variant
from stepscope.workloads.measure.nvml import device_handle, parent_handle
from stepscope.workloads.measure.records import DeviceFacts


class PeakError(StepscopeError, ValueError):
    """A peak cannot be given or used as asked; the message says why."""


TABLE_PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "fp8")
_ALIASES = {"amp_bf16": "bf16", "amp_fp16": "fp16"}
BASES = ("datasheet", "derived")


def canonical_precision(precision: str) -> str:
    """The datasheet row a stepscope precision is measured against."""
    p = _ALIASES.get(precision, precision)
    if p not in TABLE_PRECISIONS:
        raise PeakError(f"precision: {precision!r} is not one of fp32, tf32, bf16, fp16, amp_bf16, amp_fp16, fp8")
    return p


@dataclass(frozen=True, slots=True)
class Peak:
    """One dense peak. `printed` is the figure as the source prints it."""

    label: str  # GpuModel.label, e.g. "H100-SXM-80GB"
    precision: str  # fp32 | tf32 | bf16 | fp16 | fp8
    tflops: float  # dense TFLOP/s
    printed: float
    printed_sparse: bool  # the source marks `printed` "with sparsity": tflops = printed / 2
    source: str  # URL of the datasheet/whitepaper/product page
    basis: str = "datasheet"  # "derived": not printed by NVIDIA; see `note`
    verified: bool = True  # False: carried over, not checked against a copy of `source`
    note: str = ""

    def __post_init__(self) -> None:
        if self.precision not in TABLE_PRECISIONS:
            raise PeakError(f"precision: {self.precision!r} is not one of {', '.join(TABLE_PRECISIONS)}")
        if not self.source.startswith("https://"):
            raise PeakError(f"source: {self.label} {self.precision} needs an https:// URL, got {self.source!r}")
        if self.basis not in BASES:
            raise PeakError(f"basis: {self.basis!r} is not one of {', '.join(BASES)}")
        if not self.tflops > 0:
            raise PeakError(f"tflops: {self.label} {self.precision} must be > 0, got {self.tflops!r}")
        want = self.printed / 2 if self.printed_sparse else self.printed
        if abs(self.tflops - want) > 1e-9:
            raise PeakError(f"tflops: {self.label} {self.precision} is {self.tflops}, but the printed {self.printed} gives {want}")


# Sources. Each URL names the document the figures were read from.
H100_WHITEPAPER = "https://nvdam.widen.net/s/95bdhpsgrs/nvidia_h100_tensor_core_gpu_architecture_whitepaper_v1.03"
H100_PAGE = "https://www.nvidia.com/en-us/data-center/h100/"
H200_PAGE = "https://www.nvidia.com/en-us/data-center/h200/"
A100_DATASHEET = "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf"
A10_DATASHEET = "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a10/pdf/a10-datasheet.pdf"
A10G_NOTE_URL = "https://www.baseten.co/blog/nvidia-a10-vs-a10g-for-ml-model-inference/"
L4_DATASHEET = "https://resources.nvidia.com/en-us-gpu-resources/l4-tensor-datasheet"
L40S_PAGE = "https://www.nvidia.com/en-us/data-center/l40s/"
V100_DATASHEET = "https://images.nvidia.com/content/technologies/volta/pdf/volta-v100-datasheet-update-us-1165301-r5.pdf"
ADA_WHITEPAPER = "https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf"
AMPERE_WHITEPAPER = "https://images.nvidia.com/aem-dam/en-zz/Solutions/data-center/nvidia-ampere-architecture-whitepaper.pdf"
HGX_PAGE = "https://www.nvidia.com/en-us/data-center/hgx/"
GB200_PAGE = "https://www.nvidia.com/en-us/data-center/gb200-nvl72/"
GH200_PAGE = "https://www.nvidia.com/en-us/data-center/grace-hopper-superchip/"
H800_NOTE_URL = "https://aiwiki.ai/wiki/nvidia_h800"
H20_REPORT = "https://zangshuxian.com/new/674733024499207168"
L40_DATASHEET = "https://images.nvidia.com/content/Solutions/data-center/vgpu-L40-datasheet.pdf"
T4_DATASHEET = "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/tesla-t4/t4-tensor-core-datasheet-951643.pdf"
A30_DATASHEET = "https://www.nvidia.com/content/dam/en-zz/Solutions/data-center/products/a30-gpu/pdf/a30-datasheet.pdf"
A40_DATASHEET = "https://images.nvidia.com/content/Solutions/data-center/a40/nvidia-a40-datasheet.pdf"
# Where a copy of a source's table was read, for entries whose own document could not be
# opened here (they stay verified=False until someone checks the document itself).
BLACKWELL_TABLE_COPY = "https://zdszero.github.io/Computer/Artificial_Intelligence/Hardware.html"
L40_TABLE_COPY = "https://www.mullet.se/product.html?product_id=355414"
A40_TABLE_COPY = "https://www.ecer.com/corp/details-uuuedqa-p1bsay9-multi-display-setups-supported-by-48gb-gddr6-ecc-memory-nvidia-a40-gpu-and-vga-outputs.html"
T4_TABLE_COPY = "https://geektopia.es/es/technology/2018/09/13/noticias/nvidia-presenta-la-nueva-tesla-t4-basada-en-turing-orientada-a-inteligencia-artificial.html"


def _rows(
    labels: tuple[str, ...],
    source: str,
    printed: dict[str, float],
    sparse: tuple[str, ...] = (),
    unverified: tuple[str, ...] = (),
    basis: str = "datasheet",
    notes: dict[str, str] | None = None,
) -> list[Peak]:
    notes = notes or {}
    return [
        Peak(
            label=label,
            precision=p,
            tflops=value / 2 if p in sparse else value,
            printed=value,
            printed_sparse=p in sparse,
            source=source,
            basis=basis,
            verified=p not in unverified,
            note=notes.get(p, ""),
        )
        for label in labels
        for p, value in printed.items()
    ]


_TENSOR = ("tf32", "bf16", "fp16", "fp8")

PEAKS: tuple[Peak, ...] = tuple(
    # H100 whitepaper, Table 1 "NVIDIA H100 Tensor Core GPU Performance Specs", columns
    # H100 SXM5 / H100 PCIe; prints dense and sparse side by side ("989.4 | 1978.9").
    _rows(("H100-SXM-80GB",), H100_WHITEPAPER,
          {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4, "fp8": 1978.9},
          unverified=("fp32", "tf32", "fp8"))
    + _rows(("H100-PCIe-80GB",), H100_WHITEPAPER,
            {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0, "fp8": 1513.0},
            unverified=("fp32", "tf32", "fp16", "fp8"))
    # H100 product page, column "H100 NVL" (94 GB per GPU): Tensor Core rows "* With sparsity".
    + _rows(("H100-NVL-94GB",), H100_PAGE,
            {"fp32": 60.0, "tf32": 835.0, "bf16": 1671.0, "fp16": 1671.0, "fp8": 3341.0},
            sparse=_TENSOR)
    # H200 product page, columns "H200 SXM" / "H200 NVL": same GH100 silicon and figures as
    # H100 SXM / H100 NVL, Tensor Core rows "* With sparsity".
    + _rows(("H200-SXM-141GB",), H200_PAGE,
            {"fp32": 67.0, "tf32": 989.0, "bf16": 1979.0, "fp16": 1979.0, "fp8": 3958.0},
            sparse=_TENSOR, unverified=("fp32", "tf32", "bf16", "fp16", "fp8"))
    + _rows(("H200-NVL-141GB",), H200_PAGE,
            {"fp32": 60.0, "tf32": 835.0, "bf16": 1671.0, "fp16": 1671.0, "fp8": 3341.0},
            sparse=_TENSOR, unverified=("fp32", "tf32", "bf16", "fp16", "fp8"))
    # A100 datasheet (JUN21), one column per variant, identical compute figures for all four;
    # prints dense first: "BFLOAT16 Tensor Core 312 TFLOPS | 624 TFLOPS*". No FP8 on Ampere.
    + _rows(("A100-SXM-40GB", "A100-SXM-80GB", "A100-PCIe-40GB", "A100-PCIe-80GB"), A100_DATASHEET,
            {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0})
    # A10 datasheet: "BFLOAT16 Tensor Core 125 TF | 250 TF*" (dense first).
    + _rows(("A10-24GB",), A10_DATASHEET,
            {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0}, unverified=("fp32", "tf32", "fp16"))
    # A10G (AWS G5 only): NVIDIA publishes no datasheet. Derived, not printed: GA102 with 80 SMs
    # at a 1710 MHz max SM clock, FP32 128 FMA/clk/SM, and the half-rate FP32-accumulate tensor
    # path of GA102 parts other than A10/A40/A6000 (512 dense FP16 FLOP/clk/SM). The linked
    # article reports the A10G trading tensor rate for CUDA-core rate against the A10.
    + _rows(("A10G-24GB",), A10G_NOTE_URL,
            {"fp32": 35.0, "tf32": 35.0, "bf16": 70.0, "fp16": 70.0},
            basis="derived", unverified=("fp32", "tf32", "bf16", "fp16"),
            notes={p: "derived: 80 SMs x 1710 MHz; prefer measured_matmul_peak" for p in ("fp32", "tf32", "bf16", "fp16")})
    # L4 datasheet: every Tensor Core row is "* Shown with sparsity" (TF32 120*, BF16 242*, FP8 485*).
    + _rows(("L4-24GB",), L4_DATASHEET,
            {"fp32": 30.3, "tf32": 120.0, "bf16": 242.0, "fp16": 242.0, "fp8": 485.0},
            sparse=_TENSOR, unverified=("fp8",))
    # L40S product page/datasheet: prints dense first, "BFLOAT16 Tensor Core 362.05 | 733*".
    + _rows(("L40S-48GB",), L40S_PAGE,
            {"fp32": 91.6, "tf32": 183.0, "bf16": 362.05, "fp16": 362.05, "fp8": 733.0})
    # V100 datasheet: SXM2 "Tensor Performance 125 TFLOPS", PCIe 112; Volta has no sparsity,
    # no TF32 and no BF16 tensor path. stepscope's tf32 on a V100 runs FP32 GEMMs.
    + _rows(("V100-SXM-16GB", "V100-SXM-32GB"), V100_DATASHEET,
            {"fp32": 15.7, "tf32": 15.7, "fp16": 125.0},
            notes={"tf32": "no TF32 on Volta: FP32 CUDA-core rate"})
    + _rows(("V100-PCIe-16GB", "V100-PCIe-32GB"), V100_DATASHEET,
            {"fp32": 14.0, "tf32": 14.0, "fp16": 112.0},
            notes={"tf32": "no TF32 on Volta: FP32 CUDA-core rate"})
    # Ada whitepaper v2.02, Appendix A, GeForce RTX 4090: "Peak BF16 Tensor TFLOPS with FP32
    # Accumulate 165.2/330.4" (dense/sparse); GeForce runs FP32-accumulate at half the
    # FP16-accumulate rate (330.3), and PyTorch's half GEMMs accumulate in FP32.
    + _rows(("RTX4090-24GB",), ADA_WHITEPAPER,
            {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2, "fp16": 165.2, "fp8": 330.3},
            unverified=("tf32",))
    # HGX page, "Individual Blackwell GPU Specifications", column HGX B200 (per GPU):
    # FP8 9 PFLOPS, FP16/BF16 4.5, TF32 2.2, FP32 75 TFLOPS; footnote: Tensor Core figures
    # "with sparsity". Read from a copy of the table (BLACKWELL_TABLE_COPY), not the page.
    + _rows(("B200-180GB",), HGX_PAGE,
            {"fp32": 75.0, "tf32": 2200.0, "bf16": 4500.0, "fp16": 4500.0, "fp8": 9000.0},
            sparse=_TENSOR, unverified=("fp32", "tf32", "bf16", "fp16", "fp8"),
            notes={p: f"table copy read at {BLACKWELL_TABLE_COPY}" for p in ("fp32", "tf32", "bf16", "fp16", "fp8")})
    # GB200 NVL72 page, per GPU (the same table's GB200 column): FP8 10 PFLOPS, FP16/BF16 5,
    # TF32 2.5, FP32 80 TFLOPS, Tensor Core figures with sparsity; at up to 1,200 W per GPU.
    + _rows(("GB200-186GB",), GB200_PAGE,
            {"fp32": 80.0, "tf32": 2500.0, "bf16": 5000.0, "fp16": 5000.0, "fp8": 10000.0},
            sparse=_TENSOR, unverified=("fp32", "tf32", "bf16", "fp16", "fp8"),
            notes={p: f"table copy read at {BLACKWELL_TABLE_COPY}" for p in ("fp32", "tf32", "bf16", "fp16", "fp8")})
    # GH200 product page/datasheet: the Hopper GPU of the superchip carries the H100 SXM's
    # figures (FP8 3,958*, BF16 1,979*, TF32 989*, FP32 67; * with sparsity). Not seen here.
    + _rows(("GH200-96GB", "GH200-144GB"), GH200_PAGE,
            {"fp32": 67.0, "tf32": 989.0, "bf16": 1979.0, "fp16": 1979.0, "fp8": 3958.0},
            sparse=_TENSOR, unverified=("fp32", "tf32", "bf16", "fp16", "fp8"),
            notes={p: "not checked against a copy of the source" for p in ("fp32", "tf32", "bf16", "fp16", "fp8")})
    # H800 (China export variant of H100): the H100's GH100 configuration with FP64 and NVLink
    # cut (H800_NOTE_URL); its tensor rates are taken to be the H100 SXM's and PCIe's, the
    # whitepaper's dense figures. Derived: no NVIDIA H800 document seen here.
    + _rows(("H800-SXM-80GB",), H100_WHITEPAPER,
            {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4, "fp8": 1978.9},
            basis="derived", unverified=("fp32", "tf32", "bf16", "fp16", "fp8"),
            notes={p: f"derived: H100 SXM figures; H800 = H100 with FP64/NVLink cut ({H800_NOTE_URL})"
                   for p in ("fp32", "tf32", "bf16", "fp16", "fp8")})
    + _rows(("H800-PCIe-80GB",), H100_WHITEPAPER,
            {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0, "fp8": 1513.0},
            basis="derived", unverified=("fp32", "tf32", "bf16", "fp16", "fp8"),
            notes={p: f"derived: H100 PCIe figures; H800 = H100 with FP64/NVLink cut ({H800_NOTE_URL})"
                   for p in ("fp32", "tf32", "bf16", "fp16", "fp8")})
    # H20: NVIDIA publishes no page; partner spec sheets as reported (H20_REPORT, dense):
    # FP16 148 TFLOPS "稠密" (dense), TF32 74, FP32 44; FP8 296 (the INT8 figure; Hopper runs
    # FP8 at the INT8 rate).
    + _rows(("H20-96GB",), H20_REPORT,
            {"fp32": 44.0, "tf32": 74.0, "bf16": 148.0, "fp16": 148.0, "fp8": 296.0},
            unverified=("fp32", "tf32", "bf16", "fp16", "fp8"),
            notes={p: "no NVIDIA document; a report of partner spec sheets" for p in ("fp32", "tf32", "bf16", "fp16", "fp8")})
    # L40 datasheet: prints dense first, "BFLOAT16 Tensor Core 181.05 | 362.1*", "TF32 90.5 | 181*",
    # "FP8 362 | 724*" (* with sparsity). Read from a copy of the table (L40_TABLE_COPY).
    + _rows(("L40-48GB",), L40_DATASHEET,
            {"fp32": 90.5, "tf32": 90.5, "bf16": 181.05, "fp16": 181.05, "fp8": 362.0},
            unverified=("fp32", "tf32", "bf16", "fp16", "fp8"),
            notes={p: f"table copy read at {L40_TABLE_COPY}" for p in ("fp32", "tf32", "bf16", "fp16", "fp8")})
    # T4 datasheet: "Single-Precision 8.1 TFLOPS", "Mixed-Precision (FP16/FP32) 65 TFLOPS";
    # Turing has no sparsity, no TF32 and no BF16 tensor path: stepscope's tf32 runs FP32 GEMMs.
    + _rows(("T4-16GB",), T4_DATASHEET,
            {"fp32": 8.1, "tf32": 8.1, "fp16": 65.0},
            unverified=("fp32", "tf32", "fp16"),
            notes={"fp32": f"figures as reported at {T4_TABLE_COPY}", "fp16": f"figures as reported at {T4_TABLE_COPY}",
                   "tf32": "no TF32 on Turing: FP32 CUDA-core rate"})
    # A30 datasheet: prints dense first, "TF32 Tensor Core 82 | 165*", "BFLOAT16 Tensor Core
    # 165 | 330*", "FP16 165 | 330*", FP32 10.3. Not checked against a copy here.
    + _rows(("A30-24GB",), A30_DATASHEET,
            {"fp32": 10.3, "tf32": 82.0, "bf16": 165.0, "fp16": 165.0},
            unverified=("fp32", "tf32", "bf16", "fp16"),
            notes={p: "not checked against a copy of the source" for p in ("fp32", "tf32", "bf16", "fp16")})
    # A40 datasheet: prints dense first, "Peak BF16 Tensor TFLOPS with FP32 Accumulate 149.7 |
    # 299.4*", "Peak TF32 Tensor TFLOPS 74.8 | 149.6*", FP32 37.4 (FP16 with FP32 accumulate:
    # the BF16 rate). Read from a copy of the datasheet text (A40_TABLE_COPY).
    + _rows(("A40-48GB",), A40_DATASHEET,
            {"fp32": 37.4, "tf32": 74.8, "bf16": 149.7, "fp16": 149.7},
            unverified=("fp32", "tf32", "bf16", "fp16"),
            notes={p: f"datasheet text copy read at {A40_TABLE_COPY}" for p in ("fp32", "tf32", "bf16", "fp16")})
)

_BY_KEY = {(p.label, p.precision): p for p in PEAKS}


def datasheet_peak(label_or_model: str | GpuModel, precision: str, *, allow_derived: bool = True) -> Peak | None:
    """The dense peak for a variant and a stepscope precision, or None if not in the table.

    `label_or_model` is a GpuModel, a label ("H100-SXM-80GB"), or an NVML device
    name ("NVIDIA H100 80GB HBM3", read with `gpu_variant`). A label with another
    memory size than the table's (an "H100-SXM-94GB") falls back to its family and
    form when every table entry for them agrees. `allow_derived=False` refuses
    figures NVIDIA does not print (the A10G's).
    """
    p = canonical_precision(precision)
    if isinstance(label_or_model, GpuModel):
        model = label_or_model
    elif (label_or_model, p) in _BY_KEY or any(e.label == label_or_model for e in PEAKS):
        return _allowed(_BY_KEY.get((label_or_model, p)), allow_derived)
    else:
        model = gpu_variant(label_or_model)
    hit = _BY_KEY.get((model.label, p))
    if hit is None:
        prefix = "-".join(x for x in (model.family, model.form_factor) if x) + "-"
        same = [e for e in PEAKS if e.precision == p and e.label.startswith(prefix)]
        if same and len({e.tflops for e in same}) == 1:
            hit = same[0]
    return _allowed(hit, allow_derived)


def _allowed(peak: Peak | None, allow_derived: bool) -> Peak | None:
    if peak is not None and peak.basis == "derived" and not allow_derived:
        return None
    return peak


def mfu(achieved_tflops: float, peak_tflops: float, *, tolerance: float = 0.0) -> float:
    """Achieved over peak, refusing what cannot be a utilisation.

    A ratio above 1 means the peak is wrong (a sparse figure, another variant's,
    another precision's) or the achieved FLOP count is. `tolerance` admits a
    ratio up to 1 + tolerance, for noise against a *measured* peak.
    """
    if not peak_tflops > 0:
        raise PeakError(f"peak_tflops: must be > 0, got {peak_tflops!r}")
    if not achieved_tflops >= 0:
        raise PeakError(f"achieved_tflops: must be >= 0, got {achieved_tflops!r}")
    ratio = achieved_tflops / peak_tflops
    if ratio > 1.0 + tolerance:
        raise PeakError(
            f"mfu: {achieved_tflops:g} TFLOP/s achieved is above the {peak_tflops:g} TFLOP/s peak; "
            "the peak is for another variant or precision, or is a sparse figure"
        )
    return ratio


# ---------------------------------------------------------------- the device's datasheet peak

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


# ---------------------------------------------------------------- measured peak

CACHE_FILE = "matmul_peaks.json"
# Cache entries and keys of this format only; older files keep their entries (another
# stepscope on the node may read them) but their keys never match: format 1's are JSON
# lists, later ones JSON objects holding the format. The format is part of the key and
# goes up whenever the way the figure is measured changes, so that no figure measured
# the old way is read as the new: 2, time-based and keyed by threads, power and clocks;
# 3, the second operand transposed (nn.Linear's layout).
CACHE_FORMAT = 3
# Square sizes: large enough that a GPU's tensor cores are saturated (8192^3 is
# 1.1 TFLOP per matmul); on a CPU 1024, halved while one matmul would take
# longer than a batch.
CUDA_SIZE = 8192
CPU_SIZE, CPU_PROBE, CPU_MIN_SIZE = 1024, 512, 256
# Time-based: batches of back-to-back matmuls run until MIN_S seconds of them are
# done (and at least MIN_KEPT are kept); batches that start in the first WARM_S
# seconds (and always the first) are the ramp-up and are dropped; the peak is the
# median batch rate. GPU: 2 s in all, its first 0.5 s the ramp. A GPU's clocks settle only once its
# power controller has seen the sustained load, and NVML averages board power over
# 1 s on Ampere and newer (nvmlDeviceGetPowerUsage,
# https://docs.nvidia.com/deploy/nvml-api/group__nvmlDeviceQueries.html): a ~30 ms
# burst reads the boost clock a power-capped board cannot hold. Reasoning, not a
# measured constant; the sampler's clock and throttle columns show whether it held.
# CPU: 0.3 s, enough for tens of batches and short enough for the tests.
CUDA_MIN_S, CUDA_WARM_S, CUDA_BATCH_S = 2.0, 0.5, 0.05
CPU_MIN_S, CPU_WARM_S, CPU_BATCH_S = 0.3, 0.03, 0.02
MIN_KEPT = 5
MAX_FACTOR = 4  # stop after MAX_FACTOR * MIN_S whatever was kept (a device slower than planned)


@dataclass(frozen=True, slots=True)
class MeasuredPeak:
    """One measurement of the matmul peak: the median batch rate and its spread."""

    tflops: float  # median TFLOP/s over the kept batches
    min_tflops: float
    max_tflops: float
    samples: int  # batches kept
    discarded: int  # ramp-up batches dropped
    duration_s: float  # time the kept batches took, device time on a GPU
    n: int  # square size
    reps: int  # matmuls per batch


# Revalidation. A cached figure expires after MAX_AGE_DAYS: the key holds what a process can
# read (torch, threads, affinity, power limit, clocks), not what changes under it (a driver,
# firmware, BIOS or microcode update, the CPU governor, a machine busy while the figure was
# taken), which changes on the scale of maintenance windows, commonly weekly. One measurement
# costs CPU_MIN_S (0.3 s) per precision on a CPU and CUDA_MIN_S (2 s) on a GPU, so once a week
# per key is negligible, and a figure taken on a busy machine lives a week at most even if no
# step ever runs faster than it. A choice, not a measured constant; $STEPSCOPE_PEAK_MAX_AGE_DAYS
# sets it (0: measure on every read; inf: never expire).
MAX_AGE_ENV = "STEPSCOPE_PEAK_MAX_AGE_DAYS"
MAX_AGE_DAYS = 7.0
# A step may run above the median batch rate up to the best batch (it is what the device
# demonstrably reached): the tolerance is max / median - 1, capped at TOLERANCE_CAP, since a
# figure whose best batch is more than 10% above its median was timed under varying load or
# clocks and bounds nothing tightly. A choice, not a measured constant.
TOLERANCE_CAP = 0.10
# A figure measured less than REMEASURE_AFTER_S ago is not measured again because a step ran
# above it (it is as fresh as a figure gets; the step's FLOP count is the suspect): this bounds
# the cost of a workload whose count is wrong to one measurement per key per 5 minutes.
REMEASURE_AFTER_S = 300.0

#: `PeakCheck.flag` (the trials' `mfu_flag`), most serious first.
FLAG_ABOVE_DATASHEET = "above_datasheet_peak"  # above the datasheet peak: the FLOP count or the variant is wrong
FLAG_ABOVE_MEASURED = "above_measured_peak"  # above the measured peak by more than its tolerance, re-measured or fresh
FLAG_WITHIN_TOLERANCE = "within_peak_tolerance"  # above the measured median, within its batches' spread
FLAG_REMEASURED = "measured_peak_remeasured"  # the cached figure was below the step's rate; measured again, now fine
FLAGS = (FLAG_ABOVE_DATASHEET, FLAG_ABOVE_MEASURED, FLAG_WITHIN_TOLERANCE, FLAG_REMEASURED)
#: The precisions a plain torch.matmul can be timed in (the datasheet rows but fp8).
MEASURABLE = ("fp32", "tf32", "bf16", "fp16")


def peak_max_age_s() -> float:
    """Seconds a cached measured peak stays valid: $STEPSCOPE_PEAK_MAX_AGE_DAYS (a number of
    days, 0 or more; `inf` never expires) times 86,400, else MAX_AGE_DAYS (7). Raises
    PeakError for anything else, naming the variable."""
    text = os.environ.get(MAX_AGE_ENV, "").strip()
    if not text:
        return MAX_AGE_DAYS * 86400.0
    try:
        days = float(text)
    except ValueError:
        days = math.nan
    if not days >= 0:  # NaN and negatives
        raise PeakError(f"{MAX_AGE_ENV}: {text!r} is not a number of days of 0 or more (e.g. 7, 0.5, or inf)")
    return days * 86400.0


@dataclass(frozen=True, slots=True)
class CachedPeak:
    """One measured matmul peak, as the cache holds it.

    `tflops` is the median batch rate (TFLOP/s), `min_tflops`/`max_tflops` the slowest
    and fastest kept batches'. `age_s`: seconds since `measured_at` (UTC ISO 8601), inf
    where the entry does not say when it was measured. `measured_now`: this call
    measured it (a new key, `refresh`, or an expired entry), else it was read."""

    key: dict[str, Any]  # `cache_key`'s fields: host, device, uuid, precision, torch, conditions
    tflops: float
    min_tflops: float
    max_tflops: float
    samples: int | None
    measured_at: str | None
    age_s: float
    measured_now: bool = False

    @property
    def tolerance(self) -> float:
        """How far above the median a step may run, as a fraction: max / median - 1 (the
        fastest batch was reached), 0 or more, at most TOLERANCE_CAP."""
        return min(max(self.max_tflops / self.tflops - 1.0, 0.0), TOLERANCE_CAP)

    @property
    def spread(self) -> float:
        """(max - min) / median of the kept batches' rates, a fraction."""
        return (self.max_tflops - self.min_tflops) / self.tflops


def measured_matmul_peak(
    device: Any, precision: str, cache_dir: str | os.PathLike, *, refresh: bool = False, torch_module: Any = None,
    nvml: Any = None,
) -> float:
    """Dense matmul TFLOP/s this device reaches in `precision`: `matmul_peak(...).tflops`."""
    return matmul_peak(device, precision, cache_dir, refresh=refresh, torch_module=torch_module, nvml=nvml).tflops


def matmul_peak(
    device: Any, precision: str, cache_dir: str | os.PathLike, *, refresh: bool = False, torch_module: Any = None,
    nvml: Any = None, max_age_s: float | None = None,
) -> CachedPeak:
    """The dense matmul peak this device reaches in `precision`, measured once per node and condition.

    The median of `measure_matmul_peak`'s batches, cached in
    `cache_dir`/matmul_peaks.json under everything that changes it
    (`cache_key`): host, device name and UUID (a MIG slice has its own), precision,
    torch version; on a CPU torch's thread count and the CPU affinity size; on a
    GPU the enforced power limit and the application and maximum clocks NVML
    reports (None where NVML cannot say). A second call under the same key reads
    the cache unless the entry is older than `max_age_s` (default `peak_max_age_s()`,
    7 days); `refresh=True` measures again. `nvml`: pynvml or a stand-in.
    Raises PeakError for fp8 (no plain torch.matmul), an unknown precision or a bad
    $STEPSCOPE_PEAK_MAX_AGE_DAYS.
    """
    p = canonical_precision(precision)
    if p == "fp8":
        raise PeakError("precision: fp8 has no plain torch.matmul; measure it with a scaled-mm benchmark")
    max_age_s = peak_max_age_s() if max_age_s is None else max_age_s
    torch = torch_module
    if torch is None:
        import torch
    dev = torch.device(device)
    name, uuid = _device_identity(torch, dev)
    conditions = _conditions(torch, dev, uuid, nvml)
    key = cache_key(socket.gethostname(), name, uuid, p, str(torch.__version__), conditions)
    path = Path(cache_dir) / CACHE_FILE
    if not refresh:
        hit = _cached(key, _read_cache(path).get(key))
        if hit is not None and hit.age_s <= max_age_s:
            return hit

    m = _measure(torch, dev, p)
    cache = _read_cache(path)  # another worker on this node may have written meanwhile
    cache[key] = {
        "format": CACHE_FORMAT, "tflops": m.tflops, "min_tflops": m.min_tflops, "max_tflops": m.max_tflops,
        "samples": m.samples, "discarded": m.discarded, "duration_s": m.duration_s, "n": m.n, "reps": m.reps,
        "device": name, "precision": p, "conditions": conditions,
        "measured_at": _now().isoformat(timespec="seconds"),
    }
    _write_cache(path, cache)
    return dataclasses.replace(_cached(key, cache[key]), measured_now=True)


@dataclass(frozen=True, slots=True)
class PeakCheck:
    """`checked_matmul_peak`'s answer: the peak to divide by, and why a rate is flagged."""

    peak: CachedPeak
    flag: str | None  # one of FLAGS (a FLAG_ABOVE_DATASHEET aside, which `flag_rates` adds), or None
    remeasured: bool  # measured again because the rate was above the cached figure


def checked_matmul_peak(device: Any, precision: str, cache_dir: str | os.PathLike, rate_tflops: float | None, *,
                        torch_module: Any = None, nvml: Any = None) -> PeakCheck:
    """The measured peak (`matmul_peak`) to divide `rate_tflops` (the step's achieved
    TFLOP/s, hardware FLOPs: what ran) by, revalidated against it.

    A rate above the figure by more than its tolerance (`CachedPeak.tolerance`) means
    the figure is too low (timed on a busy machine, before a driver update...): unless
    it was measured less than REMEASURE_AFTER_S ago, it is measured again and the cache
    updated (flag FLAG_REMEASURED). A rate still above it gets FLAG_ABOVE_MEASURED, one
    above the median within the tolerance FLAG_WITHIN_TOLERANCE. Raises as `matmul_peak`.
    """
    peak = matmul_peak(device, precision, cache_dir, torch_module=torch_module, nvml=nvml)
    remeasured = False
    if _beyond(rate_tflops, peak) and not peak.measured_now and peak.age_s >= REMEASURE_AFTER_S:
        peak = matmul_peak(device, precision, cache_dir, refresh=True, torch_module=torch_module, nvml=nvml)
        remeasured = True
    if _beyond(rate_tflops, peak):
        flag = FLAG_ABOVE_MEASURED
    elif rate_tflops is not None and rate_tflops > peak.tflops:
        flag = FLAG_WITHIN_TOLERANCE
    else:
        flag = FLAG_REMEASURED if remeasured else None
    return PeakCheck(peak, flag, remeasured)


def _beyond(rate_tflops: float | None, peak: CachedPeak) -> bool:
    return rate_tflops is not None and rate_tflops > peak.tflops * (1.0 + peak.tolerance)


def flag_rates(measured_flag: str | None, datasheet_shares: tuple[float | None, ...]) -> str | None:
    """The one flag of a trial's MFU/HFU: FLAG_ABOVE_DATASHEET when a share of the datasheet
    peak is above 1 (a datasheet figure has no tolerance: the count or the variant is wrong),
    else `measured_flag` (`PeakCheck.flag`)."""
    if any(s is not None and s > 1.0 for s in datasheet_shares):
        return FLAG_ABOVE_DATASHEET
    return measured_flag


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _age_s(measured_at: Any, now: dt.datetime) -> float:
    """Seconds since an ISO 8601 time; inf for a missing or unreadable one, 0 for a future one."""
    try:
        when = dt.datetime.fromisoformat(measured_at)
    except (TypeError, ValueError):
        return math.inf
    if when.tzinfo is None:  # written as UTC; an entry without an offset is read as UTC
        when = when.replace(tzinfo=dt.timezone.utc)
    return max((now - when).total_seconds(), 0.0)


def _cached(key: str, record: Any, now: dt.datetime | None = None) -> CachedPeak | None:
    """A cache entry of this format as a CachedPeak, or None for anything else."""
    value = _entry(record)
    if value is None:
        return None
    lo, hi = _positive(record.get("min_tflops")), _positive(record.get("max_tflops"))
    samples = record.get("samples")
    return CachedPeak(
        key=_key_fields(key), tflops=value, min_tflops=min(lo or value, value), max_tflops=max(hi or value, value),
        samples=samples if isinstance(samples, int) and not isinstance(samples, bool) else None,
        measured_at=record.get("measured_at") if isinstance(record.get("measured_at"), str) else None,
        age_s=_age_s(record.get("measured_at"), now or _now()),
    )


def _positive(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def _key_fields(key: str) -> dict[str, Any]:
    """A key's fields (format aside); {} for a key that is not a JSON object (format 1)."""
    try:
        fields = json.loads(key)
    except ValueError:
        return {}
    return {k: v for k, v in fields.items() if k != "format"} if isinstance(fields, dict) else {}


# ---------------------------------------------------------------- the cache, for `stepscope peaks`

@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One entry of the cache file as `stepscope peaks` lists it. `state`: `fresh` (read
    for a trial), `expired` (older than the age limit: measured again when next read), or
    `other_format` (written by another stepscope version or damaged: never read here)."""

    key: dict[str, Any]
    format: int | None
    state: str
    peak: CachedPeak | None  # None for other_format


def cache_entries(cache_dir: str | os.PathLike, *, max_age_s: float | None = None) -> list[CacheEntry]:
    """Every entry of `cache_dir`/matmul_peaks.json, in file order; [] without a file.
    Raises PeakError for a bad $STEPSCOPE_PEAK_MAX_AGE_DAYS."""
    max_age_s = peak_max_age_s() if max_age_s is None else max_age_s
    now, out = _now(), []
    for key, record in _read_cache(Path(cache_dir) / CACHE_FILE).items():
        peak = _cached(key, record, now)
        fmt = record.get("format") if isinstance(record, dict) else None
        state = "other_format" if peak is None else ("expired" if peak.age_s > max_age_s else "fresh")
        out.append(CacheEntry(_key_fields(key), fmt if isinstance(fmt, int) else None, state, peak))
    return out


def clear_cache(cache_dir: str | os.PathLike) -> int:
    """Remove `cache_dir`/matmul_peaks.json; the number of entries it held (0 without one)."""
    path = Path(cache_dir) / CACHE_FILE
    held = len(_read_cache(path))
    path.unlink(missing_ok=True)
    return held


def refresh_peaks(device: str | None, precisions: tuple[str, ...], cache_dir: str | os.PathLike, *,
                  torch_module: Any = None) -> list[CachedPeak]:
    """Measure the matmul peak of `device` (`cpu`, `cuda`, or None: cuda where torch sees
    one, else cpu; cuda is its current device) in each of `precisions` (aliases measured
    once) again, replacing their cache entries. Raises PeakError for cuda on a node
    without one, or a precision that cannot be measured."""
    torch = torch_module
    if torch is None:
        import torch
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise PeakError("device: torch sees no CUDA device on this node; use --device cpu")
    out = []
    for p in dict.fromkeys(canonical_precision(x) for x in precisions):
        out.append(matmul_peak(device, p, cache_dir, refresh=True, torch_module=torch))
    return out


def cache_key(host: str, name: str, uuid: str | None, precision: str, torch_version: str,
              conditions: dict[str, Any]) -> str:
    """The cache key: a JSON object (old files used JSON lists, which never equal one)."""
    return json.dumps({"format": CACHE_FORMAT, "host": host, "device": name, "uuid": uuid, "precision": precision,
                       "torch": torch_version, **conditions}, sort_keys=True)


def _entry(record: Any) -> float | None:
    """The figure of a cache entry of this format, or None for anything else."""
    if not isinstance(record, dict) or record.get("format") != CACHE_FORMAT:
        return None
    value = record.get("tflops")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def _device_identity(torch: Any, dev: Any) -> tuple[str, str | None]:
    from stepscope.workloads.measure.device import cpu_model, torch_uuid

    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return str(props.name), torch_uuid(props)

    return cpu_model(), None


def _conditions(torch: Any, dev: Any, uuid: str | None, nvml: Any = None) -> dict[str, Any]:
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


def _measure(torch: Any, dev: Any, precision: str) -> MeasuredPeak:
    dtype = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    from stepscope.workloads.measure.precision import restore_tf32, set_tf32

    saved = set_tf32(torch, precision == "tf32")  # as a trial in this precision runs
    try:
        cuda = dev.type == "cuda"
        n, reps = _plan(torch, dev, dtype, CUDA_BATCH_S if cuda else CPU_BATCH_S)
        batches = _cuda_batches(torch, dev, dtype, n, reps) if cuda else _cpu_batches(torch, dev, dtype, n, reps)
        try:
            min_s, warm_s = (CUDA_MIN_S, CUDA_WARM_S) if cuda else (CPU_MIN_S, CPU_WARM_S)
            return summarize(batches, 2 * n**3 * reps, min_s, warm_s, n=n, reps=reps)
        finally:
            batches.close()
    finally:
        restore_tf32(torch, saved)


def summarize(batch_seconds: Iterator[float], flop_per_batch: float, min_s: float, warm_s: float, *,
              min_kept: int = MIN_KEPT, max_s: float | None = None, n: int = 0, reps: int = 0) -> MeasuredPeak:
    """Draw batch times (seconds) until `min_s` seconds have passed and `min_kept`
    batches are kept, or `max_s` (default MAX_FACTOR * min_s) have passed; drop the
    batches that start before `warm_s` (the first always); the median rate of the rest.
    """
    max_s = MAX_FACTOR * min_s if max_s is None else max_s
    elapsed, kept, discarded = 0.0, [], 0
    for seconds in batch_seconds:
        if elapsed < warm_s or discarded == 0:
            discarded += 1
        else:
            kept.append(seconds)
        elapsed += seconds
        if (elapsed >= min_s and len(kept) >= min_kept) or (elapsed >= max_s and kept):
            break
    if not kept:
        raise PeakError("measured peak: no batch was kept; the device gave no timings")
    rates = [flop_per_batch / max(t, 1e-12) / 1e12 for t in kept]
    return MeasuredPeak(statistics.median(rates), min(rates), max(rates), len(kept), discarded, sum(kept), n, reps)


def _plan(torch: Any, dev: Any, dtype: Any, batch_s: float) -> tuple[int, int]:
    """A size and a matmul count per batch that make a batch last about `batch_s`.

    On a CPU a probe at 512 predicts the larger size by n^3 (a CPU fp16 matmul can
    be 50x slower than fp32, so no fixed size fits every precision); one matmul
    at the chosen size then sets the count. On a GPU the size is CUDA_SIZE.
    """
    if dev.type == "cuda":
        n = CUDA_SIZE
    else:
        probe = max(_time_matmul(torch, dev, dtype, CPU_PROBE, 1), 1e-6)
        n = CPU_SIZE
        while n > CPU_MIN_SIZE and probe * (n / CPU_PROBE) ** 3 > batch_s:
            n //= 2
    one = max(_time_matmul(torch, dev, dtype, n, 1), 1e-6)
    return n, max(1, min(200, int(batch_s / one)))


def _time_matmul(torch: Any, dev: Any, dtype: Any, n: int, reps: int) -> float:
    """Seconds for `reps` back-to-back n x n matmuls on `dev` (a probe for `_plan`)."""
    a, b, c = _operands(torch, dev, dtype, n)
    if dev.type == "cuda":
        with torch.cuda.device(dev):  # events record on the current stream of `dev`
            # Sync so the warm-up and the allocations are finished before the start event
            # is recorded; otherwise the first timed matmul would queue behind them.
            torch.cuda.synchronize(dev)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                torch.matmul(a, b, out=c)
            end.record()
            # The one sync of the probe: elapsed_time needs the end event complete.
            end.synchronize()
            return start.elapsed_time(end) / 1e3
    t0 = perf_counter_ns()
    for _ in range(reps):
        torch.matmul(a, b, out=c)
    return (perf_counter_ns() - t0) / 1e9


def _operands(torch: Any, dev: Any, dtype: Any, n: int) -> tuple[Any, Any, Any]:
    a = torch.randn(n, n, device=dev, dtype=dtype)
    # The second operand transposed: nn.Linear's layout (x @ W.T), which training runs. On a
    # CPU in fp16, torch 2.13's matmul of two row-major operands takes a path ~13x slower,
    # so a peak timed that way sits below the steps' own rate (MFU above 1).
    b = torch.randn(n, n, device=dev, dtype=dtype).t()
    c = torch.empty(n, n, device=dev, dtype=dtype)
    torch.matmul(a, b, out=c)  # warm-up: cuBLAS/oneDNN pick and cache their kernel here
    return a, b, c


def _cpu_batches(torch: Any, dev: Any, dtype: Any, n: int, reps: int) -> Iterator[float]:
    a, b, c = _operands(torch, dev, dtype, n)
    while True:
        t0 = perf_counter_ns()
        for _ in range(reps):
            torch.matmul(a, b, out=c)
        yield (perf_counter_ns() - t0) / 1e9


def _cuda_batches(torch: Any, dev: Any, dtype: Any, n: int, reps: int) -> Iterator[float]:
    """Device seconds of each batch, bracketed by CUDA events, one batch always queued
    ahead of the one being read so the GPU never idles between batches (an idle gap
    would let the clocks drop and the power average fall)."""
    a, b, c = _operands(torch, dev, dtype, n)
    with torch.cuda.device(dev):  # events record on the current stream of `dev`
        # Sync so the warm-up and the allocations are finished before the first start event.
        torch.cuda.synchronize(dev)

        def enqueue() -> tuple[Any, Any]:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                torch.matmul(a, b, out=c)
            end.record()
            return start, end

        pending = enqueue()
        try:
            while True:
                queued = enqueue()  # the next batch goes in before this one is read
                # The one wait per batch: this batch's end event, with the next batch already
                # queued behind it; elapsed_time needs the end event complete.
                pending[1].synchronize()
                yield pending[0].elapsed_time(pending[1]) / 1e3
                pending = queued
        finally:
            # Leave no batch running when the caller stops reading.
            torch.cuda.synchronize(dev)


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    # Write-then-rename so a concurrent reader on the node sees the old file or the
    # new one, never half of one.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".matmul_peaks.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
