"""GPU variant from NVML facts, and the NVML identity query.

FakeNVML follows pynvml's real API (nvidia-ml-py 12/13): errors are NVMLError
subclasses built from an error code (NVMLError_NotSupported is code 3), ECC and
MIG modes come back as [current, pending], power in milliwatts, the CUDA driver
version as 1000*major + 10*minor, PCI info as a struct with `busId`, and older
bindings return bytes where newer ones return str. Its constants deliberately
differ from pynvml's values, so code that hard-codes NVML_CLOCK_SM = 1 fails.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from types import SimpleNamespace

import pytest

from stepscope.workloads.measure.identity import (
    GpuModel,
    gpu_variant,
    identity_by_uuid,
    nvml_identity,
)

MIB = 2**20


class NVMLError(Exception):
    """pynvml.NVMLError: carries `value`, the NVML return code; str() is NVML's text."""

    _text = {3: "Not Supported", 4: "Insufficient Permissions", 6: "Not Found", 13: "Function Not Found"}

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return self._text.get(self.value, f"NVML Error with code {self.value}")


class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's own spelling
    def __init__(self) -> None:
        super().__init__(3)


class NVMLError_FunctionNotFound(NVMLError):  # noqa: N801
    def __init__(self) -> None:
        super().__init__(13)


class NVMLError_NotFound(NVMLError):  # noqa: N801
    def __init__(self) -> None:
        super().__init__(6)


class FakeNVML:
    """The slice of pynvml that nvml_identity uses, over a table of devices by UUID."""

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    # pynvml: NVML_CLOCK_SM = 1, NVML_CLOCK_MEM = 2, NVML_FEATURE_ENABLED = 1,
    # NVML_DEVICE_MIG_ENABLE = 1. Shifted here so that only constants read from the
    # module handed in give the right answers.
    NVML_CLOCK_SM = 11
    NVML_CLOCK_MEM = 12
    NVML_FEATURE_DISABLED = 20
    NVML_FEATURE_ENABLED = 21
    NVML_DEVICE_MIG_DISABLE = 30
    NVML_DEVICE_MIG_ENABLE = 31

    def __init__(self, gpus: dict[str, dict], *, as_bytes=False, unsupported=(), init_fails=False,
                 driver="550.54.15", cuda=12040):
        self.gpus, self.as_bytes, self.unsupported = gpus, as_bytes, set(unsupported)
        self.init_fails, self.driver, self.cuda = init_fails, driver, cuda
        self.initialised = 0

    def _out(self, text: str):
        return text.encode() if self.as_bytes else text

    def _check(self, fn: str):
        if fn in self.unsupported:
            raise NVMLError_NotSupported()

    def nvmlInit(self):
        if self.init_fails:
            raise NVMLError(12)  # NVML_ERROR_LIBRARY_NOT_FOUND
        self.initialised += 1

    def nvmlShutdown(self):
        self.initialised -= 1

    def nvmlDeviceGetHandleByUUID(self, uuid):
        if uuid not in self.gpus:
            raise NVMLError_NotFound()
        return uuid

    def nvmlSystemGetDriverVersion(self):
        self._check("nvmlSystemGetDriverVersion")
        return self._out(self.driver)

    def nvmlSystemGetCudaDriverVersion(self):
        self._check("nvmlSystemGetCudaDriverVersion")
        return self.cuda

    def nvmlDeviceGetName(self, handle):
        return self._out(self.gpus[handle]["name"])

    def nvmlDeviceGetUUID(self, handle):
        return self._out(handle)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(total=self.gpus[handle]["memory"], free=0, used=0)

    def nvmlDeviceGetPciInfo(self, handle):
        self._check("nvmlDeviceGetPciInfo")
        return SimpleNamespace(busId=self._out(self.gpus[handle]["bus"]), domain=0, bus=0x19, device=0)

    def nvmlDeviceGetClockInfo(self, handle, clock_type):
        self._check("nvmlDeviceGetClockInfo")
        return self.gpus[handle]["clocks"][clock_type]

    def nvmlDeviceGetMaxClockInfo(self, handle, clock_type):
        self._check("nvmlDeviceGetMaxClockInfo")
        return self.gpus[handle]["max_clocks"][clock_type]

    def nvmlDeviceGetPowerManagementLimit(self, handle):
        self._check("nvmlDeviceGetPowerManagementLimit")
        return self.gpus[handle]["power_mw"]

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        self._check("nvmlDeviceGetEnforcedPowerLimit")
        return self.gpus[handle]["power_mw"]

    def nvmlDeviceGetEccMode(self, handle):
        self._check("nvmlDeviceGetEccMode")
        return [self.NVML_FEATURE_ENABLED, self.NVML_FEATURE_DISABLED]

    def nvmlDeviceGetMigMode(self, handle):
        self._check("nvmlDeviceGetMigMode")
        return [self.NVML_DEVICE_MIG_DISABLE, self.NVML_DEVICE_MIG_ENABLE]


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
        "ecc_enabled": True,
        "ecc_pending": False,
        "mig_enabled": False,
        "mig_pending": True,
        "driver_version": "550.54.15",
        "cuda_driver_version": "12.4",
        "gpu_variant": "H100-SXM-80GB",
        "nvml_unavailable": {},
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


def test_importing_identity_does_not_import_torch():
    code = "import sys, stepscope.workloads.measure.identity, stepscope.workloads.measure.peaks; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
