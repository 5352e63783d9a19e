"""Peak tables, the device's datasheet peak (MIG slices included) and the measured matmul peak.

The table tests pin the figures a reviewer would check first (H100 SXM / PCIe /
NVL dense BF16 989 / 756 / 835) and the invariants that catch the usual slip,
a "with sparsity" figure used as a dense one. The measured peak runs for real
on this CPU at a small size; its statistics are checked on scripted batch times
against a hand-sorted median, and its cache is proven by making a second
measurement impossible.
"""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
import torch
from nvml_fakes import MIB, FakeNVML

from stepscope.workloads.measure import flop_peaks
from stepscope.workloads.measure.flop_peaks import (
    PEAKS,
    MeasuredPeak,
    Peak,
    PeakError,
    conditions,
    datasheet,
    datasheet_peak,
    device_datasheet_peak,
    flag_rates,
    matmul,
    measured_matmul_peak,
    mfu,
)
from stepscope.workloads.measure.flop_peaks import cache as peak_cache
from stepscope.workloads.measure.identity import gpu_variant
from stepscope.workloads.measure.records import DeviceFacts, NvmlIdentity

HOPPER_AMPERE = [lb for lb in {p.label for p in PEAKS}
                 if lb.startswith(("H100", "H200", "H800", "H20-", "GH200", "A100", "A10-", "A30", "A40"))]
BLACKWELL = ("B200", "GB200")


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
    # printed figure on its own (H100 NVL: 835 / 2 = 417.5 TF32 against 1671 / 2 = 835.5 BF16;
    # A30: 82 printed for 165 / 2 = 82.5).
    assert bf16 == pytest.approx(2 * tf32, rel=0.01)


def test_no_entry_is_a_sparse_figure():
    for p in PEAKS:
        if p.printed_sparse:
            assert p.tflops == p.printed / 2, p
    # NVIDIA's sparse headline numbers, which must never appear as a dense peak.
    sparse_headlines = {
        ("H100", "bf16"): 1979, ("H100", "tf32"): 989, ("H100", "fp8"): 3958,
        ("H200", "bf16"): 1979, ("H200", "tf32"): 989, ("H200", "fp8"): 3958,
        ("A100", "bf16"): 624, ("A100", "tf32"): 312, ("L4", "bf16"): 242, ("L40S", "bf16"): 733,
        ("B200", "bf16"): 4500, ("B200", "fp8"): 9000, ("GB200", "bf16"): 5000, ("GB200", "fp8"): 10000,
        ("GH200", "bf16"): 1979, ("H800", "bf16"): 1979, ("L40", "bf16"): 362, ("A30", "bf16"): 330,
        ("A40", "bf16"): 299,
    }
    for p in PEAKS:
        family = p.label.split("-")[0]
        assert round(p.tflops) != sparse_headlines.get((family, p.precision)), p
    # Dense 16-bit tensor rate is at most 16x the FP32 CUDA-core rate on every part
    # listed before Blackwell (A100: 312 / 19.5 = 16.0), at most 32x on Blackwell, whose
    # tensor cores doubled their rate per SM (B200: 2250 / 75 = 30); a sparse figure would
    # double the ratio. 1% for NVIDIA's rounding (A30, GA100 like the A100: 165 / 10.3 = 16.02).
    for label in {p.label for p in PEAKS}:
        half = datasheet_peak(label, "bf16") or datasheet_peak(label, "fp16")
        bound = 32 if label.startswith(BLACKWELL) else 16
        assert half.tflops <= 1.01 * bound * datasheet_peak(label, "fp32").tflops, label


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


@pytest.mark.parametrize(("name", "precision", "dense"), [
    # Each right value is the printed figure, halved where the source marks it "with sparsity".
    ("NVIDIA B200", "bf16", 4500 / 2), ("NVIDIA B200", "fp8", 9000 / 2), ("NVIDIA B200", "fp32", 75.0),
    ("NVIDIA GB200", "bf16", 5000 / 2), ("NVIDIA GB200", "tf32", 2500 / 2),
    ("NVIDIA GH200 480GB", "bf16", 1979 / 2), ("NVIDIA H800", "bf16", 989.4), ("NVIDIA H800 PCIe", "bf16", 756.0),
    ("NVIDIA H20", "bf16", 148.0), ("NVIDIA L40", "bf16", 181.05), ("NVIDIA L40", "fp8", 362.0),
    ("Tesla T4", "fp16", 65.0), ("Tesla T4", "tf32", 8.1), ("NVIDIA A30", "bf16", 165.0), ("NVIDIA A40", "tf32", 74.8),
])
def test_the_added_boards(name, precision, dense):
    assert datasheet_peak(name, precision).tflops == pytest.approx(dense)


def test_unchecked_figures_say_so():
    # Every figure not read in its own source is marked, and says where it was read instead.
    for p in PEAKS:
        if p.label.startswith(("B200", "GB200", "GH200", "H800", "H20-", "L40-", "T4", "A30", "A40")):
            assert not p.verified and p.note, p
    assert datasheet_peak("NVIDIA H800", "bf16").basis == "derived"
    assert datasheet_peak("Tesla T4", "bf16") is None  # Turing has no BF16 tensor path


def test_a_peak_that_disagrees_with_its_printed_figure_is_refused():
    with pytest.raises(PeakError, match="the printed 1979.0 gives 989.5"):
        Peak("H100-SXM-80GB", "bf16", 1979.0, 1979.0, True, datasheet.H100_PAGE)
    with pytest.raises(PeakError, match="needs an https:// URL"):
        Peak("H100-SXM-80GB", "bf16", 989.0, 989.0, False, "datasheet")


# ---------------------------------------------------------------- mfu

def test_mfu_of_plausible_inputs_is_a_fraction():
    assert mfu(400.0, datasheet_peak("H100-SXM-80GB", "bf16").tflops) == pytest.approx(0.4043, abs=1e-4)
    for achieved in (1e-3, 50.0, 312.0):
        assert 0 < mfu(achieved, 312.0) <= 1


def test_mfu_is_stored_as_computed_above_1_too():
    # Never clipped and never refused: a share above 1 is a finding (a wrong peak or FLOP
    # count), which `flag_rates` names in mfu_flag, as the trials' shares are kept.
    assert mfu(800.0, 756.0) == pytest.approx(800.0 / 756.0)
    assert mfu(101.0, 100.0) == pytest.approx(1.01)
    assert flag_rates(None, (mfu(800.0, 756.0),)) == "above_datasheet_peak"


def test_mfu_refuses_what_is_no_share():
    with pytest.raises(PeakError, match="peak_tflops"):
        mfu(1.0, 0.0)
    with pytest.raises(PeakError, match="achieved_tflops"):
        mfu(-1.0, 10.0)


# ---------------------------------------------------------------- the device's datasheet peak

def cuda_facts(name, sm_count, *, uuid="GPU-1b8a6f43-3c7e-5d9a-a0b1-000000000001", memory=None, identity=None):
    return DeviceFacts(device_kind="cuda", device_uuid=uuid, host="h", num_threads=1, python_version="3.11",
                       torch_version="2.13", device_name=name, device_memory_bytes=memory, sm_count=sm_count,
                       identity=identity)


A100_BF16 = 312.0  # A100 datasheet, dense
H200_SXM_BF16 = 1979.0 / 2  # H200 page, "with sparsity"


def test_a_whole_board_gets_the_table_figure():
    got = device_datasheet_peak(cuda_facts("NVIDIA A100-SXM4-40GB", 108, memory=40960 * MIB), "bf16")
    assert (got.variant, got.tflops, got.board_tflops, got.fraction) == ("A100-SXM-40GB", A100_BF16, A100_BF16, 1.0)
    assert got.source == datasheet.A100_DATASHEET


def test_a_mig_slice_gets_its_share_of_the_board_from_nvml():
    # A100 1g.5gb: 14 of the board's 108 SMs (torch counts the slice's; NVML the board's).
    ident = NvmlIdentity(gpu_variant="A100-SXM-40GB", is_mig_instance=True, mig_parent_sm_count=108)
    got = device_datasheet_peak(cuda_facts("NVIDIA A100-SXM4-40GB MIG 1g.5gb", 14, uuid="MIG-x", identity=ident), "bf16")
    assert got.tflops == pytest.approx(A100_BF16 * 14 / 108) and got.fraction == pytest.approx(14 / 108)
    assert got.board_tflops == A100_BF16 and "14 of the board's 108 SMs (NVML)" in got.note


def test_a_mig_slice_without_nvml_uses_the_sm_table():
    # No NVML: the slice is told by its MIG- UUID and name, the variant by the name
    # (the slice's 4.75 GiB must not be read as the board's memory), the board's SMs
    # from BOARD_SMS.
    facts = cuda_facts("NVIDIA A100-SXM4-40GB MIG 1g.5gb", 14, uuid="MIG-x", memory=4864 * MIB)
    got = device_datasheet_peak(facts, "amp_bf16")
    assert got.tflops == pytest.approx(A100_BF16 * 14 / 108) and "table" in got.note
    h200 = device_datasheet_peak(cuda_facts("NVIDIA H200 MIG 1g.18gb", 16, uuid="MIG-y", memory=16384 * MIB), "bf16")
    assert h200.variant == "H200-SXM" and h200.tflops == pytest.approx(H200_SXM_BF16 * 16 / 132)


def test_a_mig_slice_whose_share_is_unknown_gets_no_peak_rather_than_the_boards():
    ident = NvmlIdentity(gpu_variant="A100-SXM-40GB", is_mig_instance=True)
    assert device_datasheet_peak(cuda_facts("NVIDIA A100-SXM4-40GB MIG 1g.5gb", None, identity=ident), "bf16") is None
    # A board SM count below the slice's is not a share.
    ident = NvmlIdentity(gpu_variant="A100-SXM-40GB", is_mig_instance=True, mig_parent_sm_count=10)
    assert device_datasheet_peak(cuda_facts("x", 14, identity=ident), "bf16") is None
    # A family whose board SMs neither NVML nor the table know.
    assert device_datasheet_peak(cuda_facts("NVIDIA L4 MIG 1g", 10, uuid="MIG-z"), "bf16") is None


def test_a_capped_board_is_read_by_its_default_limit_end_to_end():
    from stepscope.workloads.measure.identity import nvml_identity

    h200, mig = "GPU-1b8a6f43-3c7e-5d9a-a0b1-000000000003", "MIG-1b8a6f43-3c7e-5d9a-a0b1-000000000004"
    nvml = FakeNVML({
        h200: {"name": "NVIDIA H200", "memory": 143771 * MIB, "power_mw": 500_000, "default_power_mw": 700_000,
               "clocks": {11: 1980, 12: 3201}, "max_clocks": {11: 1980, 12: 3201}, "cores": 16896, "cc": (9, 0)},
        mig: {"name": "NVIDIA H200 MIG 1g.18gb", "memory": 16384 * MIB, "parent": h200, "sm_count": 16},
    })
    whole = device_datasheet_peak(cuda_facts("NVIDIA H200", 132, uuid=h200, identity=nvml_identity(h200, nvml)), "bf16")
    assert (whole.variant, whole.tflops) == ("H200-SXM-141GB", H200_SXM_BF16)  # not NVL's 835.5
    # Without NVML's variant, the facts' power limits decide the same way.
    ident = NvmlIdentity(power_limit_w=500.0, power_limit_default_w=700.0)
    assert device_datasheet_peak(cuda_facts("NVIDIA H200", 132, identity=ident), "bf16").tflops == H200_SXM_BF16
    part = device_datasheet_peak(cuda_facts("NVIDIA H200 MIG 1g.18gb", 16, uuid=mig,
                                            identity=nvml_identity(mig, nvml)), "bf16")
    assert part.tflops == pytest.approx(H200_SXM_BF16 * 16 / (16896 // 128))


def test_a_cpu_or_an_unknown_board_has_no_datasheet_peak():
    cpu = DeviceFacts(device_kind="cpu", device_uuid="CPU-h", host="h", num_threads=1, python_version="3.11",
                      torch_version="2.13", device_name="Intel(R) Xeon(R)")
    assert device_datasheet_peak(cpu, "fp32") is None
    assert device_datasheet_peak(cuda_facts("NVIDIA RTX A6000", 84), "bf16") is None
    with pytest.raises(PeakError, match="precision"):
        device_datasheet_peak(cuda_facts("NVIDIA A100-SXM4-40GB", 108), "int8")


def test_every_board_sm_entry_names_a_source_and_a_family_with_peaks():
    families = {gpu_variant(p.label).family for p in PEAKS}
    for entry in flop_peaks.BOARD_SMS:
        assert entry.source.startswith("https://") and entry.family in families and entry.sm_count > 0, entry


# ---------------------------------------------------------------- measured peak: statistics

def test_the_median_of_the_batches_after_the_ramp_up():
    times = iter([0.5, 0.2, 0.11, 0.10, 0.12, 0.10, 0.09, 0.10])
    got = matmul.summarize(times, 1e12, min_s=1.0, warm_s=0.6, min_kept=3, n=7, reps=2)
    # By hand: 0.5 and 0.2 start before 0.6 s (ramp-up); 0.11, 0.10, 0.12 are kept and
    # bring the total to 1.03 s >= 1.0 s with 3 kept: stop. Rates are 1e12 / t / 1e12.
    kept = sorted(1 / t for t in (0.11, 0.10, 0.12))
    assert got == MeasuredPeak(tflops=kept[1], min_tflops=kept[0], max_tflops=kept[2], samples=3, discarded=2,
                               duration_s=pytest.approx(0.33), n=7, reps=2)
    assert next(times) == 0.10  # nothing was drawn past the stop


def test_the_first_batch_is_always_dropped_and_slow_devices_stop_at_max_s():
    got = matmul.summarize(iter([1.0] * 100), 2e12, min_s=0.5, warm_s=0.0, min_kept=5, max_s=3.0)
    # 1 s batches: the first dropped, then kept until 3 s have passed (2 kept), short of 5.
    assert (got.samples, got.discarded, got.tflops) == (2, 1, 2.0)
    with pytest.raises(PeakError, match="no batch was kept"):
        matmul.summarize(iter([0.1]), 1e12, min_s=1.0, warm_s=0.0)


def test_the_rate_counts_2_n_cubed_flops_per_matmul(tmp_path, monkeypatch):
    monkeypatch.setattr(matmul, "_plan", lambda torch, dev, dtype, batch_s: (64, 3))

    def steady(torch, dev, dtype, n, reps):
        while True:
            yield 0.01

    monkeypatch.setattr(matmul, "_cpu_batches", steady)
    got = measured_matmul_peak("cpu", "fp32", tmp_path)
    assert got == pytest.approx(2 * 64**3 * 3 / 0.01 / 1e12)  # a multiply-add is 2 FLOPs


# ---------------------------------------------------------------- measured peak: for real, and its cache

def only_entry(tmp_path):
    (key, record), = json.loads((tmp_path / peak_cache.CACHE_FILE).read_text()).items()
    return json.loads(key), record


def test_cpu_peak_is_measured_for_long_enough_then_read_from_the_cache(tmp_path, monkeypatch):
    t0 = time.perf_counter()
    first = measured_matmul_peak("cpu", "fp32", tmp_path)
    took = time.perf_counter() - t0
    assert matmul.CPU_MIN_S <= took < 3.0  # time-based: not a burst, and still fast
    key, record = only_entry(tmp_path)
    assert record["tflops"] == first > 0 and record["format"] == peak_cache.CACHE_FORMAT
    assert record["min_tflops"] <= first <= record["max_tflops"]
    # MIN_KEPT batches, unless a loaded machine made them so slow that MAX_FACTOR * CPU_MIN_S ran
    # out first (the rule itself is pinned on scripted batch times above).
    assert record["samples"] >= 1 and record["discarded"] >= 1
    assert record["duration_s"] >= 0.5 * matmul.CPU_MIN_S  # the kept batches: most of the run, not a burst
    assert key["num_threads"] == torch.get_num_threads() and key["cpu_affinity"] == len(os.sched_getaffinity(0))
    assert (key["precision"], key["torch"], key["host"]) == ("fp32", str(torch.__version__), socket.gethostname())

    monkeypatch.setattr(matmul, "measure", lambda *a: pytest.fail("measured again instead of reading the cache"))
    assert measured_matmul_peak(torch.device("cpu"), "fp32", tmp_path) == first


def test_a_figure_measured_the_old_way_is_never_read_as_the_new(tmp_path, monkeypatch):
    """The cache format is part of the key and goes up when the measurement changes: an
    entry of the previous format, for the same device and conditions, is measured again."""
    monkeypatch.setattr(matmul, "measure", lambda *a: MeasuredPeak(1.0, 1.0, 1.0, 5, 1, 0.3, 64, 1))
    monkeypatch.setattr(peak_cache, "CACHE_FORMAT", peak_cache.CACHE_FORMAT - 1)
    assert measured_matmul_peak("cpu", "fp32", tmp_path) == 1.0
    monkeypatch.undo()
    monkeypatch.setattr(matmul, "measure", lambda *a: MeasuredPeak(2.0, 2.0, 2.0, 5, 1, 0.3, 64, 1))
    assert measured_matmul_peak("cpu", "fp32", tmp_path) == 2.0


def fake_measure(values):
    def measure(torch, dev, p):
        v = values[(p, torch.get_num_threads())]
        return MeasuredPeak(v, v, v, 5, 1, 0.3, 64, 1)
    return measure


def test_thread_counts_do_not_share_a_figure(tmp_path, monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(matmul, "measure", fake_measure({("fp32", 1): 1.0, ("fp32", 2): 2.0}))
    try:
        torch.set_num_threads(1)
        assert measured_matmul_peak("cpu", "fp32", tmp_path) == 1.0
        torch.set_num_threads(2)
        assert measured_matmul_peak("cpu", "fp32", tmp_path) == 2.0
        monkeypatch.setattr(matmul, "measure", lambda *a: pytest.fail("1 thread was measured already"))
        torch.set_num_threads(1)
        assert measured_matmul_peak("cpu", "fp32", tmp_path) == 1.0
    finally:
        torch.set_num_threads(before)
    assert len(json.loads((tmp_path / peak_cache.CACHE_FILE).read_text())) == 2


def test_the_cpu_affinity_is_part_of_the_key(tmp_path, monkeypatch):
    monkeypatch.setattr(matmul, "measure", lambda torch, dev, p: MeasuredPeak(1.0, 1.0, 1.0, 5, 1, 0.3, 64, 1))
    monkeypatch.setattr(conditions, "_affinity_size", lambda: 1)
    measured_matmul_peak("cpu", "fp32", tmp_path)
    monkeypatch.setattr(conditions, "_affinity_size", lambda: 2)
    measured_matmul_peak("cpu", "fp32", tmp_path)
    keys = [json.loads(k)["cpu_affinity"] for k in json.loads((tmp_path / peak_cache.CACHE_FILE).read_text())]
    assert sorted(keys) == [1, 2]


def test_an_old_cache_file_is_not_misread(tmp_path, monkeypatch):
    from stepscope.workloads.measure.device import cpu_model

    # The format before issue 9: a JSON list key, no thread count, a best-of-3 figure.
    old_key = json.dumps([socket.gethostname(), cpu_model(), None, "fp32", str(torch.__version__)])
    (tmp_path / peak_cache.CACHE_FILE).write_text(json.dumps({old_key: {"tflops": 123.0, "n": 512, "reps": 3, "runs": 3}}))
    monkeypatch.setattr(matmul, "measure", lambda torch, dev, p: MeasuredPeak(1.0, 1.0, 1.0, 5, 1, 0.3, 64, 1))
    assert measured_matmul_peak("cpu", "fp32", tmp_path) == 1.0
    cache = json.loads((tmp_path / peak_cache.CACHE_FILE).read_text())
    assert cache[old_key]["tflops"] == 123.0 and len(cache) == 2  # left for whoever wrote it


def test_a_damaged_entry_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setattr(matmul, "measure", lambda torch, dev, p: MeasuredPeak(1.0, 1.0, 1.0, 5, 1, 0.3, 64, 1))
    measured_matmul_peak("cpu", "fp32", tmp_path)
    path = tmp_path / peak_cache.CACHE_FILE
    path.write_text(json.dumps({k: dict(v, tflops="fast") for k, v in json.loads(path.read_text()).items()}))
    monkeypatch.setattr(matmul, "measure", lambda torch, dev, p: MeasuredPeak(3.0, 3.0, 3.0, 5, 1, 0.3, 64, 1))
    assert measured_matmul_peak("cpu", "fp32", tmp_path) == 3.0
    # An entry that does not say it is of this format is not read either.
    path.write_text(json.dumps({k: dict(v, format=1) for k, v in json.loads(path.read_text()).items()}))
    monkeypatch.setattr(matmul, "measure", lambda torch, dev, p: MeasuredPeak(4.0, 4.0, 4.0, 5, 1, 0.3, 64, 1))
    assert measured_matmul_peak("cpu", "fp32", tmp_path) == 4.0


def test_aliases_share_a_measurement_and_precisions_do_not(tmp_path, monkeypatch):
    monkeypatch.setattr(matmul, "measure", lambda torch, dev, p: MeasuredPeak(*([{"bf16": 2.0, "fp32": 1.0}[p]] * 3),
                                                                              5, 1, 0.3, 64, 1))
    assert measured_matmul_peak("cpu", "bf16", tmp_path) == 2.0
    assert measured_matmul_peak("cpu", "fp32", tmp_path) == 1.0
    monkeypatch.setattr(matmul, "measure", lambda *a: pytest.fail("amp_bf16 is the bf16 measurement"))
    assert measured_matmul_peak("cpu", "amp_bf16", tmp_path) == 2.0


def test_refresh_measures_again_and_matmul_precision_is_restored(tmp_path, monkeypatch):
    monkeypatch.setattr(matmul, "_plan", lambda torch, dev, dtype, batch_s: (64, 1))
    seconds = [0.01]

    def batches(torch, dev, dtype, n, reps):
        while True:
            yield seconds[0]

    monkeypatch.setattr(matmul, "_cpu_batches", batches)
    before = torch.get_float32_matmul_precision()
    first = measured_matmul_peak("cpu", "tf32", tmp_path)
    assert torch.get_float32_matmul_precision() == before
    seconds[0] = 0.005
    assert measured_matmul_peak("cpu", "tf32", tmp_path) == first  # cached
    assert measured_matmul_peak("cpu", "tf32", tmp_path, refresh=True) == pytest.approx(2 * first)


def test_fp8_is_not_measured(tmp_path):
    with pytest.raises(PeakError, match="fp8"):
        measured_matmul_peak("cpu", "fp8", tmp_path)


# ---------------------------------------------------------------- measured peak: what keys a GPU figure

GPU = "GPU-1b8a6f43-3c7e-5d9a-a0b1-000000000001"
MIG = "MIG-1b8a6f43-3c7e-5d9a-a0b1-000000000002"


def h100(**over):
    board = {"name": "NVIDIA H100 80GB HBM3", "memory": 81559 * MIB, "power_mw": 700_000,
             "clocks": {11: 345, 12: 2619}, "max_clocks": {11: 1980, 12: 2619}, "app_clocks": {11: 1755, 12: 2619}}
    board.update(over)
    return {GPU: board, MIG: {"name": "NVIDIA H100 80GB HBM3 MIG 1g.10gb", "memory": 9856 * MIB,
                              "parent": GPU, "sm_count": 16}}


def test_gpu_conditions_are_the_power_limit_and_clocks():
    got = conditions.gpu_conditions(GPU, FakeNVML(h100(enforced_power_mw=500_000)))
    assert got == {"power_limit_w": 500.0, "sm_app_clock_mhz": 1755, "mem_app_clock_mhz": 2619,
                   "sm_max_clock_mhz": 1980, "mem_max_clock_mhz": 2619}


def test_a_power_cap_or_a_clock_setting_makes_another_key():
    def key(gpus):
        return peak_cache.cache_key("h", "NVIDIA H100 80GB HBM3", GPU, "bf16", "2.13", conditions.gpu_conditions(GPU, FakeNVML(gpus)))

    base = key(h100())
    assert key(h100()) == base
    assert key(h100(enforced_power_mw=500_000)) != base
    assert key(h100(app_clocks={11: 1410, 12: 2619})) != base


def test_a_mig_slice_is_keyed_by_its_own_uuid_and_the_boards_conditions():
    nvml = FakeNVML(h100(enforced_power_mw=600_000))
    got = conditions.gpu_conditions(MIG, nvml)
    assert got["power_limit_w"] == 600.0 and got["sm_max_clock_mhz"] == 1980
    # torch spells the slice GPU-<uuid>; NVML knows it as MIG-<uuid>.
    assert conditions.gpu_conditions("GPU-" + MIG.removeprefix("MIG-"), nvml) == got
    assert nvml.initialised == 0


def test_without_nvml_the_gpu_conditions_are_none():
    none = dict.fromkeys(("power_limit_w", "sm_app_clock_mhz", "mem_app_clock_mhz", "sm_max_clock_mhz", "mem_max_clock_mhz"))
    assert conditions.gpu_conditions(GPU, FakeNVML(h100(), init_fails=True)) == none
    assert conditions.gpu_conditions(None) == none
    # A board without application clocks (most data-centre boards since Hopper) has them None.
    gpus = h100()
    del gpus[GPU]["app_clocks"]
    assert conditions.gpu_conditions(GPU, FakeNVML(gpus))["sm_app_clock_mhz"] is None


# ---------------------------------------------------------------- measured peak: the CUDA path, simulated

class SimDevice:
    """A GPU that runs queued matmuls in order, each taking the next of `matmul_ms`
    simulated milliseconds; events complete once it has reached them (synchronize moves
    it on) and elapsed_time refuses events not yet completed, as torch does."""

    def __init__(self, matmul_ms):
        self.ms, self.queued_until, self.done_until = iter(matmul_ms), 0.0, 0.0
        self.launched, self.syncs, self.launched_at_sync = 0, 0, []

    def launch(self):
        self.queued_until += next(self.ms)
        self.launched += 1

    def synchronize(self, device=None):
        self.done_until = self.queued_until


class SimEvent:
    def __init__(self, sim, enable_timing=False):
        self.sim, self.at = sim, None

    def record(self):
        self.at = self.sim.queued_until

    def synchronize(self):
        self.sim.syncs += 1
        self.sim.launched_at_sync.append(self.sim.launched)
        self.sim.done_until = max(self.sim.done_until, self.at)

    def elapsed_time(self, end):
        if self.at is None or end.at is None or end.at > self.sim.done_until:
            raise RuntimeError("Both events must be completed before calculating elapsed time.")
        return end.at - self.at



class _FakeTensor(tuple):
    """("tensor", shape), with the transpose the peak takes of its second operand."""

    def __new__(cls, shape):
        return super().__new__(cls, ("tensor", shape))

    def t(self):
        return _FakeTensor(tuple(reversed(self[1])))

class CudaTorch:
    """torch, with a simulated CUDA device under it: tensors are placeholders, a matmul
    is a launch on the SimDevice; everything else is the real torch."""

    def __init__(self, sim, uuid):
        props = type("Props", (), {"name": "NVIDIA H100 80GB HBM3", "uuid": uuid.removeprefix("GPU-")})()
        self.cuda = type("Cuda", (), {
            "device": staticmethod(lambda dev: __import__("contextlib").nullcontext()),
            "synchronize": staticmethod(sim.synchronize),
            "Event": staticmethod(lambda enable_timing=False: SimEvent(sim, enable_timing)),
            "get_device_properties": staticmethod(lambda i: props),
            "current_device": staticmethod(lambda: 0),
        })
        self.sim = sim

    def __getattr__(self, name):
        return getattr(torch, name)

    def randn(self, *shape, device=None, dtype=None):
        return _FakeTensor(shape)

    empty = randn

    def matmul(self, a, b, out=None):
        self.sim.launch()


def test_cuda_batches_keep_the_next_batch_queued_and_drain_on_close():
    sim = SimDevice([1.0] * 100)
    batches = matmul._cuda_batches(CudaTorch(sim, GPU), torch.device("cuda"), None, 64, 3)
    assert [next(batches) for _ in range(3)] == [0.003] * 3  # 3 matmuls of 1 ms, device time
    # 1 warm-up matmul, then each batch's end was waited for with the next batch queued.
    assert sim.launched_at_sync == [1 + 2 * 3, 1 + 3 * 3, 1 + 4 * 3]
    batches.close()
    assert sim.done_until == sim.queued_until  # nothing left running


def test_the_cuda_peak_is_time_based_drops_the_ramp_and_is_keyed_by_nvml(tmp_path):
    # 0.2 s of slow (boost-less) matmuls at 2 ms, then steady at 1 ms: the ramp is inside the
    # first 0.5 s that are dropped, so every kept batch is steady and the median is
    # 2 * 8192^3 FLOP per 1 ms.
    sim = SimDevice([2.0] * 100 + [1.0] * 100_000)
    nvml = FakeNVML(h100(enforced_power_mw=500_000))
    got = measured_matmul_peak("cuda", "bf16", tmp_path, torch_module=CudaTorch(sim, GPU), nvml=nvml)
    assert got == pytest.approx(2 * 8192**3 / 1e-3 / 1e12)
    key, record = only_entry(tmp_path)
    assert record["min_tflops"] == record["max_tflops"] == record["tflops"]
    assert record["n"] == 8192 and record["reps"] == int(matmul.CUDA_BATCH_S / 2e-3)  # planned on a 2 ms matmul
    # At least 2 s of device time, the kept batches all of it but the 0.5 s ramp (give or
    # take the batch that straddles it): the time-based rule, not a ~30 ms burst.
    assert sim.done_until / 1e3 >= matmul.CUDA_MIN_S and record["samples"] >= matmul.MIN_KEPT
    assert record["duration_s"] >= matmul.CUDA_MIN_S - matmul.CUDA_WARM_S - record["reps"] * 1e-3
    assert (key["uuid"], key["power_limit_w"], key["sm_app_clock_mhz"]) == (GPU, 500.0, 1755)


@pytest.mark.gpu
def test_cuda_peak_is_below_the_datasheet(tmp_path):
    from stepscope.workloads.measure.device import describe

    facts = describe(torch, torch.device("cuda", 0))
    measured = measured_matmul_peak("cuda", "bf16", tmp_path)
    sheet = device_datasheet_peak(facts, "bf16")
    assert measured > 0
    if sheet is not None:
        assert 0.3 < mfu(measured, sheet.tflops) <= 1.05
