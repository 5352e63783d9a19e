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

`measured_matmul_peak` times a large square matmul on the device itself and
caches the result per node, as a peak the hardware demonstrably reaches (clock
limits, power caps and MIG slices included), to set beside the datasheet's.

Importing this module does not import torch.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter_ns
from typing import Any

from stepscope.errors import StepscopeError
from stepscope.workloads.measure.identity import GpuModel, gpu_variant


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


# ---------------------------------------------------------------- measured peak

CACHE_FILE = "matmul_peaks.json"
# Square sizes: large enough that a GPU's tensor cores are saturated (8192^3 is
# 1.1 TFLOP per matmul), small enough on a CPU to stay well under 2 s in all.
CUDA_SIZE, CUDA_REPS = 8192, 20
CPU_SIZE, CPU_PROBE, CPU_MIN_SIZE, CPU_BUDGET_S = 1024, 512, 256, 0.15
RUNS = 3  # best of


def measured_matmul_peak(
    device: Any, precision: str, cache_dir: str | os.PathLike, *, refresh: bool = False, torch_module: Any = None
) -> float:
    """Dense matmul TFLOP/s this device reaches in `precision`, measured once per node.

    Times a square matmul loop (8192 on CUDA; on a CPU 1024, halved while one
    matmul would take longer than 0.15 s), best of 3 runs. On CUDA the loop
    is bracketed by CUDA events with one synchronisation after it; on a CPU by
    perf_counter_ns. The result is cached in `cache_dir`/matmul_peaks.json under
    (host, device name, device UUID, precision, torch version), so a second call
    on the node reads it; `refresh=True` measures again.
    """
    p = canonical_precision(precision)
    if p == "fp8":
        raise PeakError("precision: fp8 has no plain torch.matmul; measure it with a scaled-mm benchmark")
    torch = torch_module
    if torch is None:
        import torch
    dev = torch.device(device)
    name, uuid = _device_identity(torch, dev)
    key = json.dumps([socket.gethostname(), name, uuid, p, str(torch.__version__)])
    path = Path(cache_dir) / CACHE_FILE
    cache = _read_cache(path)
    if not refresh and key in cache:
        return float(cache[key]["tflops"])

    tflops, n, reps = _measure(torch, dev, p)
    cache = _read_cache(path)  # another worker on this node may have written meanwhile
    cache[key] = {"tflops": tflops, "n": n, "reps": reps, "runs": RUNS, "device": name, "precision": p}
    _write_cache(path, cache)
    return tflops


def _device_identity(torch: Any, dev: Any) -> tuple[str, str | None]:
    from stepscope.workloads.measure.device import cpu_model, torch_uuid

    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return str(props.name), torch_uuid(props)

    return cpu_model(), None


def _measure(torch: Any, dev: Any, precision: str) -> tuple[float, int, int]:
    dtype = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    from stepscope.workloads.measure.precision import restore_tf32, set_tf32

    saved = set_tf32(torch, precision == "tf32")  # as a trial in this precision runs
    try:
        if dev.type == "cuda":
            n, reps = CUDA_SIZE, CUDA_REPS
        else:
            n, reps = _cpu_size(torch, dev, dtype)
        best = min(_time_matmul(torch, dev, dtype, n, reps) for _ in range(RUNS))
    finally:
        restore_tf32(torch, saved)
    return 2 * n**3 * reps / best / 1e12, n, reps


def _cpu_size(torch: Any, dev: Any, dtype: Any) -> tuple[int, int]:
    """A size and a rep count that keep each CPU run near CPU_BUDGET_S.

    A probe at 512 predicts the larger size by n^3 (a CPU fp16 matmul can be 50x
    slower than fp32, so no fixed size fits every precision); one matmul at the
    chosen size then sets the rep count.
    """
    probe = max(_time_matmul(torch, dev, dtype, CPU_PROBE, 1), 1e-6)
    n = CPU_SIZE
    while n > CPU_MIN_SIZE and probe * (n / CPU_PROBE) ** 3 > CPU_BUDGET_S:
        n //= 2
    one = probe if n == CPU_PROBE else max(_time_matmul(torch, dev, dtype, n, 1), 1e-6)
    return n, max(1, min(20, int(CPU_BUDGET_S / one)))


def _time_matmul(torch: Any, dev: Any, dtype: Any, n: int, reps: int) -> float:
    """Seconds for `reps` back-to-back n x n matmuls on `dev`."""
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    c = torch.empty(n, n, device=dev, dtype=dtype)
    torch.matmul(a, b, out=c)  # warm-up: cuBLAS/oneDNN pick and cache their kernel here
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
            # The one sync of the measurement: elapsed_time needs the end event complete,
            # and it completes after every matmul queued before it on this stream.
            end.synchronize()
            return start.elapsed_time(end) / 1e3
    t0 = perf_counter_ns()
    for _ in range(reps):
        torch.matmul(a, b, out=c)
    return (perf_counter_ns() - t0) / 1e9


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
