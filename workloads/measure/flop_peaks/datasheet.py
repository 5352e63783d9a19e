"""The datasheet table: the dense peak of every GPU variant in every precision, with sources.

MFU is achieved FLOP/s over a peak, so the peak must be (1) for the exact variant (an
H100 SXM is 989 dense BF16 TFLOP/s, an H100 PCIe 756, an H100 NVL 835), (2) for the
precision the step ran in (`precisions`), and (3) dense. NVIDIA's product pages and
datasheets print Tensor Core rows "with sparsity" (2:4 structured sparsity, a rate only
reached when half of every weight block is zero); a dense training step can never reach
those, so every such figure is halved here, and each entry keeps the number as printed
next to the dense one.

Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from stepscope.workloads.measure.flop_peaks.precisions import (
    TABLE_PRECISIONS,
    PeakError,
    canonical_precision,
)
from stepscope.workloads.measure.identity import GpuModel, gpu_variant

BASES = ("datasheet", "derived")


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

