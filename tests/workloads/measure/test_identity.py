"""GPU variant from NVML facts, and the NVML identity query.

The NVML stand-in is tests/workloads/measure/nvml_fakes.py's FakeNVML, which follows pynvml's
real API (nvidia-ml-py 12/13): errors built from NVML's return code, ECC and MIG modes
as [current, pending], power in milliwatts, MIG slices whose board-level queries go to
the parent handle, and constants that differ from pynvml's values so that only constants
read from the module handed in give the right answers.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from nvml_fakes import MIB, FakeNVML

from stepscope.workloads.measure.identity import (
    GpuModel,
    gpu_variant,
    identity_by_uuid,
    nvml_identity,
)

H100 = "GPU-1b8a6f43-3c7e-5d9a-a0b1-000000000001"
L4 = "GPU-1b8a6f43-3c7e-5d9a-a0b1-000000000002"
GPUS = {
    H100: {
        "name": "NVIDIA H100 80GB HBM3", "memory": 81559 * MIB, "bus": "00000000:19:00.0", "power_mw": 700_000,
        "clocks": {11: 1980, 12: 2619}, "max_clocks": {11: 1980, 12: 2619},
    },
    L4: {
        "name": "NVIDIA L4", "memory": 23034 * MIB, "bus": "00000000:3B:00.0", "power_mw": 72_000,
        "clocks": {11: 2040, 12: 6251}, "max_clocks": {11: 2040, 12: 6251},
    },
}


# ---------------------------------------------------------------- gpu_variant

@pytest.mark.parametrize(
    ("name", "memory_mib", "power_w", "label", "basis"),
    [
        ("NVIDIA H100 80GB HBM3", 81559, 700, "H100-SXM-80GB", "name"),
        ("NVIDIA H100 PCIe", 81559, 350, "H100-PCIe-80GB", "name"),
        ("NVIDIA H100 NVL", 95830, 400, "H100-NVL-94GB", "name"),
        ("NVIDIA H200", 143771, 700, "H200-SXM-141GB", "power"),
        ("NVIDIA H200 NVL", 143771, 600, "H200-NVL-141GB", "name"),
        ("NVIDIA A100-SXM4-80GB", 81920, 400, "A100-SXM-80GB", "name"),
        ("NVIDIA A100-SXM4-40GB", 40960, 400, "A100-SXM-40GB", "name"),
        ("NVIDIA A100-PCIE-40GB", 40960, 250, "A100-PCIe-40GB", "name"),
        ("NVIDIA A100 80GB PCIe", 81920, 300, "A100-PCIe-80GB", "name"),
        ("NVIDIA L4", 23034, 72, "L4-24GB", "single"),
        ("NVIDIA L40S", 46068, 350, "L40S-48GB", "single"),
        ("Tesla V100-SXM2-16GB", 16160, 300, "V100-SXM-16GB", "name"),
        ("NVIDIA A10G", 23028, 300, "A10G-24GB", "single"),
        ("NVIDIA GeForce RTX 4090", 24564, 450, "RTX4090-24GB", "single"),
        # Boards added in issue 9. NVML totals are a little under the marketed GiB.
        ("NVIDIA B200", 183359, 1000, "B200-180GB", "single"),
        ("NVIDIA GB200", 189471, 1200, "GB200-186GB", "single"),
        ("NVIDIA GH200 480GB", 97871, 900, "GH200-96GB", "single"),  # 480GB: the Grace CPU's LPDDR5X
        ("NVIDIA GH200 144G HBM3e", 146831, 900, "GH200-144GB", "single"),
        ("NVIDIA H800", 81559, 700, "H800-SXM-80GB", "power"),
        ("NVIDIA H800 PCIe", 81559, 350, "H800-PCIe-80GB", "name"),
        ("NVIDIA H800 80GB HBM3", 81559, 700, "H800-SXM-80GB", "name"),  # as the H100 SXM names itself
        ("NVIDIA H20", 97871, 500, "H20-96GB", "single"),
        ("NVIDIA L40", 46068, 300, "L40-48GB", "single"),
        ("Tesla T4", 15360, 70, "T4-16GB", "single"),
        ("NVIDIA A30", 24576, 165, "A30-24GB", "single"),
        ("NVIDIA A40", 46068, 300, "A40-48GB", "single"),
    ],
)
def test_variant_of_each_nvml_name(name, memory_mib, power_w, label, basis):
    model = gpu_variant(name, memory_mib * MIB, power_w)
    assert (model.label, model.basis) == (label, basis)


@pytest.mark.parametrize(
    ("name", "memory_mib", "power_w", "label", "basis"),
    [
        # A bare name: the power limit decides SXM (700 W) from PCIe (350 W) ...
        ("NVIDIA H100", 81559, 700, "H100-SXM-80GB", "power"),
        ("NVIDIA H100", 81559, 350, "H100-PCIe-80GB", "power"),
        # ... and at PCIe-class power the memory tells NVL (94 GB) from PCIe (80 GB).
        ("NVIDIA H100", 95830, 400, "H100-NVL-94GB", "memory"),
        ("NVIDIA H100", 95830, None, "H100-NVL-94GB", "memory"),
        ("NVIDIA H100", 81559, None, "H100-SXM-80GB", "default"),
        ("NVIDIA H200", 143771, 600, "H200-NVL-141GB", "power"),
        ("NVIDIA H200", 143771, None, "H200-SXM-141GB", "default"),
        ("NVIDIA A100", 81920, 400, "A100-SXM-80GB", "power"),
        ("NVIDIA A100", 40960, 250, "A100-PCIe-40GB", "power"),
        ("Tesla V100", 32768, 250, "V100-PCIe-32GB", "power"),
    ],
)
def test_ambiguous_names_are_decided_by_power_then_memory(name, memory_mib, power_w, label, basis):
    model = gpu_variant(name, memory_mib * MIB, power_w)
    assert (model.label, model.basis) == (label, basis)


def test_the_default_power_limit_decides_not_the_current_one():
    # An H200 SXM (700 W board) an administrator capped to 500 W: read by its current
    # limit it would be an NVL (<= 600 W), and its MFU 989.5 / 835.5 - 1 = 18% high.
    capped = gpu_variant("NVIDIA H200", 143771 * MIB, 500.0, power_limit_default_w=700.0)
    assert (capped.label, capped.basis) == ("H200-SXM-141GB", "power")
    assert gpu_variant("NVIDIA H200", 143771 * MIB, 500.0).label == "H200-NVL-141GB"  # what the current limit says
    # An NVL at its 600 W default stays an NVL, even when a limit above that is set.
    assert gpu_variant("NVIDIA H200", 143771 * MIB, 650.0, power_limit_default_w=600.0).label == "H200-NVL-141GB"
    # Same for an H100 and an A100 capped below their class.
    assert gpu_variant("NVIDIA H100", 81559 * MIB, 300.0, power_limit_default_w=700.0).label == "H100-SXM-80GB"
    assert gpu_variant("NVIDIA A100", 40960 * MIB, 250.0, power_limit_default_w=400.0).label == "A100-SXM-40GB"


def test_name_wins_over_power_and_memory():
    # An SXM board an administrator capped to 300 W is still the SXM board.
    assert gpu_variant("NVIDIA H100 80GB HBM3", 81559 * MIB, 300).label == "H100-SXM-80GB"
    # The memory in the name is the marketed size, whatever NVML's total says.
    assert gpu_variant("NVIDIA A100-SXM4-40GB", None, None).memory_gb == 40


def test_bytes_names_and_mig_suffixes_are_read():
    assert gpu_variant(b"NVIDIA H100 PCIe", 81559 * MIB, 350).label == "H100-PCIe-80GB"
    # A MIG device's name is its parent's plus the profile; its memory is the slice's.
    assert gpu_variant("NVIDIA H100 80GB HBM3 MIG 1g.10gb", 9856 * MIB, 700).label == "H100-SXM-80GB"


def test_unknown_boards_keep_their_name():
    model = gpu_variant("NVIDIA RTX A6000", 49140 * MIB, 300)
    assert (model.family, model.form_factor, model.memory_gb) == ("RTXA6000", None, 48)
    assert gpu_variant("NVIDIA L40", 46068 * MIB, 300).label == "L40-48GB"  # not L4, not L40S
    assert gpu_variant("NVIDIA A10", 23028 * MIB, 150).label == "A10-24GB"  # not A100, not A10G


def test_gpu_model_is_validated_and_frozen():
    with pytest.raises(ValueError, match="form_factor: 'SXM5' is not one of SXM, PCIe, NVL"):
        GpuModel("H100", "SXM5", 80)
    with pytest.raises(ValueError, match="memory_gb"):
        GpuModel("H100", "SXM", 0)
    model = GpuModel("H100", "SXM", 80)
    with pytest.raises(AttributeError):
        model.family = "A100"


# ---------------------------------------------------------------- nvml_identity

@pytest.mark.parametrize("as_bytes", [False, True])
def test_identity_of_an_h100(as_bytes):
    nvml = FakeNVML(GPUS, as_bytes=as_bytes)
    facts = nvml_identity(H100, nvml)
    assert dataclasses.asdict(facts) == {
        "device_name": "NVIDIA H100 80GB HBM3",
        "device_uuid": H100,
        "device_memory_bytes": 81559 * MIB,
        "pci_bus_id": "00000000:19:00.0",
        "sm_clock_mhz": 1980,
        "mem_clock_mhz": 2619,
        "sm_clock_max_mhz": 1980,
        "mem_clock_max_mhz": 2619,
        "power_limit_w": 700.0,
        "power_limit_default_w": 700.0,
        "ecc_enabled": True,
        "ecc_pending": False,
        "mig_enabled": False,
        "mig_pending": True,
        "driver_version": "550.54.15",
        "cuda_driver_version": "12.4",
        "gpu_variant": "H100-SXM-80GB",
        "nvml_unavailable": {},
        "is_mig_instance": False,
        "mig_parent_sm_count": None,
    }


def test_unsupported_queries_give_none_with_the_reason():
    # An L4 has no MIG; a container may hide ECC, clocks and the CUDA version.
    nvml = FakeNVML(GPUS, unsupported={
        "nvmlDeviceGetMigMode", "nvmlDeviceGetEccMode", "nvmlDeviceGetMaxClockInfo",
        "nvmlSystemGetCudaDriverVersion", "nvmlDeviceGetPciInfo",
    })
    facts = nvml_identity(L4, nvml)
    for key in ("mig_enabled", "mig_pending", "ecc_enabled", "ecc_pending", "sm_clock_max_mhz",
                "mem_clock_max_mhz", "cuda_driver_version", "pci_bus_id"):
        assert getattr(facts, key) is None
        assert facts.nvml_unavailable[key] == "Not Supported"
    assert facts.sm_clock_mhz == 2040 and facts.gpu_variant == "L4-24GB"


def test_power_limit_falls_back_to_the_enforced_limit():
    nvml = FakeNVML(GPUS, unsupported={"nvmlDeviceGetPowerManagementLimit"})
    facts = nvml_identity(H100, nvml)
    assert facts.power_limit_w == 700.0 and "power_limit_w" not in facts.nvml_unavailable
    nvml = FakeNVML(GPUS, unsupported={"nvmlDeviceGetPowerManagementLimit", "nvmlDeviceGetEnforcedPowerLimit"})
    assert nvml_identity(H100, nvml).power_limit_w is None


H200 = "GPU-1b8a6f43-3c7e-5d9a-a0b1-000000000003"
H200_MIG = "MIG-1b8a6f43-3c7e-5d9a-a0b1-000000000004"
A100 = "GPU-1b8a6f43-3c7e-5d9a-a0b1-000000000005"
A100_MIG = "MIG-1b8a6f43-3c7e-5d9a-a0b1-000000000006"
BOARDS = {
    # An H200 SXM an administrator capped to 500 W (nvidia-smi -pl 500): current 500, default 700.
    H200: {"name": "NVIDIA H200", "memory": 143771 * MIB, "power_mw": 500_000, "default_power_mw": 700_000,
           "clocks": {11: 1980, 12: 3201}, "max_clocks": {11: 1980, 12: 3201}, "cores": 16896, "cc": (9, 0)},
    # NVML names a MIG slice after its parent plus the profile; its memory is the slice's.
    H200_MIG: {"name": "NVIDIA H200 MIG 1g.18gb", "memory": 16384 * MIB, "parent": H200, "sm_count": 16},
    A100: {"name": "NVIDIA A100-SXM4-40GB", "memory": 40960 * MIB, "power_mw": 400_000,
           "clocks": {11: 1410, 12: 1215}, "max_clocks": {11: 1410, 12: 1215}, "cores": 6912, "cc": (8, 0)},
    A100_MIG: {"name": "NVIDIA A100-SXM4-40GB MIG 1g.5gb", "memory": 4864 * MIB, "parent": A100, "sm_count": 14},
}


def test_identity_of_a_capped_board_reads_its_default_limit():
    facts = nvml_identity(H200, FakeNVML(BOARDS))
    assert (facts.power_limit_w, facts.power_limit_default_w) == (500.0, 700.0)
    assert facts.gpu_variant == "H200-SXM-141GB"


def test_without_a_default_limit_the_current_one_decides():
    nvml = FakeNVML(BOARDS, unsupported={"nvmlDeviceGetPowerManagementDefaultLimit"})
    facts = nvml_identity(H200, nvml)
    assert facts.power_limit_default_w is None and facts.nvml_unavailable["power_limit_default_w"] == "Not Supported"
    assert facts.gpu_variant == "H200-NVL-141GB"  # 500 W current: all that is known


@pytest.mark.parametrize(("mig", "board", "board_sms"), [
    # Board SMs from NVML: FP32 cores / FP32 cores per SM (64 on compute capability 8.0,
    # 128 on 9.0, the CUDA guide's throughput table): 6912 / 64 and 16896 / 128.
    (A100_MIG, A100, 6912 // 64),
    (H200_MIG, H200, 16896 // 128),
])
def test_identity_of_a_mig_slice_reads_the_board_from_the_parent(mig, board, board_sms):
    nvml = FakeNVML(BOARDS)
    facts = nvml_identity(mig, nvml)
    whole = nvml_identity(board, nvml)
    assert facts.is_mig_instance is True and whole.is_mig_instance is False
    assert facts.mig_parent_sm_count == board_sms and whole.mig_parent_sm_count is None
    # The slice's own name, UUID and memory; the board's variant, power limits and clocks.
    assert (facts.device_uuid, facts.device_memory_bytes) == (mig, BOARDS[mig]["memory"])
    assert facts.gpu_variant == whole.gpu_variant
    assert (facts.power_limit_w, facts.power_limit_default_w) == (whole.power_limit_w, whole.power_limit_default_w)
    assert facts.sm_clock_max_mhz == BOARDS[board]["max_clocks"][11]
    assert "power_limit_w" not in facts.nvml_unavailable  # asked of the parent, which answers
    # No board-level query went to the MIG handle, which would answer NotSupported.
    assert not [fn for fn, handle in nvml.calls if handle == mig and "Power" in fn]


def test_a_mig_slice_variant_comes_from_the_board_memory_not_the_slice():
    # The slice's 16 GiB would read as "H200-SXM-16GB"; the board's 141 GB is the variant's.
    assert nvml_identity(H200_MIG, FakeNVML(BOARDS)).gpu_variant == "H200-SXM-141GB"


def test_a_mig_slice_without_board_sm_count_says_why():
    nvml = FakeNVML(BOARDS, unsupported={"nvmlDeviceGetNumGpuCores"})
    facts = nvml_identity(A100_MIG, nvml)
    assert facts.is_mig_instance is True and facts.mig_parent_sm_count is None
    assert "mig_parent_sm_count" in facts.nvml_unavailable


def test_an_old_binding_without_mig_calls_reads_mig_from_the_uuid():
    nvml = FakeNVML(BOARDS, missing=("nvmlDeviceIsMigDeviceHandle",))
    assert nvml_identity(A100_MIG, nvml).is_mig_instance is True
    assert nvml_identity(A100, nvml).is_mig_instance is False


def test_a_binding_without_a_function_gives_none():
    class OldBinding(FakeNVML):
        nvmlSystemGetCudaDriverVersion = property()  # absent: AttributeError on access

    facts = nvml_identity(H100, OldBinding(GPUS))
    assert facts.cuda_driver_version is None and "cuda_driver_version" in facts.nvml_unavailable


def test_identity_by_uuid_initialises_and_shuts_down():
    nvml = FakeNVML(GPUS)
    assert identity_by_uuid(H100, nvml).gpu_variant == "H100-SXM-80GB"
    assert identity_by_uuid("GPU-unknown", nvml) is None
    assert nvml.initialised == 0
    assert identity_by_uuid(H100, FakeNVML(GPUS, init_fails=True)) is None


@pytest.mark.slow  # a fresh interpreter
def test_importing_identity_does_not_import_torch():
    code = "import sys, stepscope.workloads.measure.identity, stepscope.workloads.measure.flop_peaks; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
