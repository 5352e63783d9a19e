"""Peak tables and the measured matmul peak.

The table tests pin the figures a reviewer would check first (H100 SXM / PCIe /
NVL dense BF16 989 / 756 / 835) and the invariants that catch the usual slip,
a "with sparsity" figure used as a dense one. The measured peak runs for real
on this CPU at a small size, and its cache is proven by making a second
measurement impossible.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from stepscope.workloads.measure import peaks
from stepscope.workloads.measure.identity import gpu_variant
from stepscope.workloads.measure.peaks import (
    PEAKS,
    Peak,
    PeakError,
    datasheet_peak,
    measured_matmul_peak,
    mfu,
)

HOPPER_AMPERE = [lb for lb in {p.label for p in PEAKS} if lb.startswith(("H100", "H200", "A100", "A10-"))]


# ---------------------------------------------------------------- the table

def test_every_entry_names_its_source_and_variant():
    for p in PEAKS:
        assert p.source.startswith("https://"), p
        assert gpu_variant(p.label).label == p.label  # the label is a real, parseable variant


@pytest.mark.parametrize(("label", "tflops"), [("H100-SXM-80GB", 989), ("H100-PCIe-80GB", 756), ("H100-NVL-94GB", 835)])
def test_h100_dense_bf16(label, tflops):
    assert abs(datasheet_peak(label, "bf16").tflops - tflops) < 1


@pytest.mark.parametrize("label", sorted(HOPPER_AMPERE))
def test_tf32_below_bf16_equal_fp16(label):
    tf32, bf16, fp16 = (datasheet_peak(label, p).tflops for p in ("tf32", "bf16", "fp16"))
    assert tf32 < bf16 == fp16
    # Hopper and Ampere tensor cores run TF32 at half the 16-bit rate; NVIDIA rounds each
    # printed figure on its own (H100 NVL: 835 / 2 = 417.5 TF32 against 1671 / 2 = 835.5 BF16).
    assert bf16 == pytest.approx(2 * tf32, rel=0.005)


def test_no_entry_is_a_sparse_figure():
    for p in PEAKS:
        if p.printed_sparse:
            assert p.tflops == p.printed / 2, p
    # NVIDIA's sparse headline numbers, which must never appear as a dense peak.
    sparse_headlines = {
        ("H100", "bf16"): 1979, ("H100", "tf32"): 989, ("H100", "fp8"): 3958,
        ("H200", "bf16"): 1979, ("H200", "tf32"): 989, ("H200", "fp8"): 3958,
        ("A100", "bf16"): 624, ("A100", "tf32"): 312, ("L4", "bf16"): 242, ("L40S", "bf16"): 733,
    }
    for p in PEAKS:
        family = p.label.split("-")[0]
        assert round(p.tflops) != sparse_headlines.get((family, p.precision)), p
    # Dense 16-bit tensor rate is at most 16x the FP32 CUDA-core rate on every part
    # listed (A100: 312 / 19.5 = 16.0); a sparse figure would double the ratio.
    for label in {p.label for p in PEAKS}:
        half = datasheet_peak(label, "bf16") or datasheet_peak(label, "fp16")
        assert half.tflops <= 16 * datasheet_peak(label, "fp32").tflops, label


def test_fp8_doubles_bf16_where_listed():
    # Within 2%: the L40S page prints BF16 362.05 but FP8 733 (not 724.1), both dense.
    for p in PEAKS:
        if p.precision == "fp8":
            assert p.tflops == pytest.approx(2 * datasheet_peak(p.label, "bf16").tflops, rel=0.02), p


def test_lookup_by_model_name_and_alias():
    model = gpu_variant("NVIDIA H100 PCIe", 81559 * 2**20, 350)
    assert datasheet_peak(model, "amp_bf16") == datasheet_peak("H100-PCIe-80GB", "bf16")
    assert datasheet_peak("NVIDIA L4", "amp_fp16").tflops == 121.0  # 242 "with sparsity", halved
    assert datasheet_peak("NVIDIA A100-SXM4-40GB", "fp32").tflops == 19.5
    # Another memory size of a listed variant falls back to its family and form.
    assert datasheet_peak("H100-SXM-94GB", "bf16").tflops == datasheet_peak("H100-SXM-80GB", "bf16").tflops
    assert datasheet_peak("Tesla V100-SXM2-32GB", "bf16") is None  # Volta has no BF16 tensor cores
    assert datasheet_peak("NVIDIA RTX A6000", "bf16") is None  # not in the table
    assert datasheet_peak("A10G-24GB", "bf16").basis == "derived"
    assert datasheet_peak("A10G-24GB", "bf16", allow_derived=False) is None
    with pytest.raises(PeakError, match="precision: 'int8' is not one of"):
        datasheet_peak("H100-SXM-80GB", "int8")


def test_a_peak_that_disagrees_with_its_printed_figure_is_refused():
    with pytest.raises(PeakError, match="the printed 1979.0 gives 989.5"):
        Peak("H100-SXM-80GB", "bf16", 1979.0, 1979.0, True, peaks.H100_PAGE)
    with pytest.raises(PeakError, match="needs an https:// URL"):
        Peak("H100-SXM-80GB", "bf16", 989.0, 989.0, False, "datasheet")


# ---------------------------------------------------------------- mfu

def test_mfu_of_plausible_inputs_is_a_fraction():
    assert mfu(400.0, datasheet_peak("H100-SXM-80GB", "bf16").tflops) == pytest.approx(0.4043, abs=1e-4)
    for achieved in (1e-3, 50.0, 312.0):
        assert 0 < mfu(achieved, 312.0) <= 1


def test_mfu_refuses_impossible_ratios():
    with pytest.raises(PeakError, match="above the 756 TFLOP/s peak"):
        mfu(800.0, 756.0)
    assert mfu(101.0, 100.0, tolerance=0.02) == pytest.approx(1.01)  # noise against a measured peak
    with pytest.raises(PeakError, match="peak_tflops"):
        mfu(1.0, 0.0)


# ---------------------------------------------------------------- measured peak

def test_cpu_peak_is_measured_once_and_then_read_from_the_cache(tmp_path, monkeypatch):
    calls = []
    real = peaks._time_matmul

    def counting(*args):
        calls.append(args[3])  # n
        return real(*args)

    monkeypatch.setattr(peaks, "_time_matmul", counting)
    t0 = time.perf_counter()
    first = measured_matmul_peak("cpu", "fp32", tmp_path)
    assert time.perf_counter() - t0 < 2.0
    assert first > 0 and calls

    def no_measuring(*args):
        raise AssertionError("measured again instead of reading the cache")

    monkeypatch.setattr(peaks, "_time_matmul", no_measuring)
    assert measured_matmul_peak(torch.device("cpu"), "fp32", tmp_path) == first
    (key, record), = json.loads((tmp_path / peaks.CACHE_FILE).read_text()).items()
    assert json.loads(key)[3:] == ["fp32", str(torch.__version__)]
    assert record["tflops"] == first and record["n"] in calls


def test_aliases_share_a_measurement_and_precisions_do_not(tmp_path, monkeypatch):
    monkeypatch.setattr(peaks, "_measure", lambda torch, dev, p: ({"bf16": 2.0, "fp32": 1.0}[p], 64, 1))
    assert measured_matmul_peak("cpu", "bf16", tmp_path) == 2.0
    assert measured_matmul_peak("cpu", "fp32", tmp_path) == 1.0
    monkeypatch.setattr(peaks, "_measure", lambda *a: pytest.fail("amp_bf16 is the bf16 measurement"))
    assert measured_matmul_peak("cpu", "amp_bf16", tmp_path) == 2.0


def test_refresh_measures_again_and_matmul_precision_is_restored(tmp_path, monkeypatch):
    monkeypatch.setattr(peaks, "_time_matmul", lambda torch, dev, dtype, n, reps: 1.0)
    before = torch.get_float32_matmul_precision()
    first = measured_matmul_peak("cpu", "tf32", tmp_path)
    assert torch.get_float32_matmul_precision() == before
    monkeypatch.setattr(peaks, "_time_matmul", lambda torch, dev, dtype, n, reps: 0.5)
    assert measured_matmul_peak("cpu", "tf32", tmp_path) == first  # cached
    assert measured_matmul_peak("cpu", "tf32", tmp_path, refresh=True) == pytest.approx(2 * first)


def test_fp8_is_not_measured(tmp_path):
    with pytest.raises(PeakError, match="fp8"):
        measured_matmul_peak("cpu", "fp8", tmp_path)


@pytest.mark.gpu
def test_cuda_peak_is_below_the_datasheet(tmp_path):
    from stepscope.workloads.measure.identity import identity_by_uuid

    props = torch.cuda.get_device_properties(0)
    uuid = str(props.uuid)
    facts = identity_by_uuid(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    measured = measured_matmul_peak("cuda", "bf16", tmp_path)
    sheet = datasheet_peak((facts.gpu_variant if facts else None) or props.name, "bf16")
    assert measured > 0
    if sheet is not None:
        assert 0.3 < mfu(measured, sheet.tflops, tolerance=0.05) <= 1.05
