"""Device facts. NVML and torch.cuda are replaced by faithful fakes that follow
their real APIs: NVML numbers devices physically and finds them by UUID, older
pynvml returns bytes, and a machine without a driver fails nvmlInit."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from stepscope.workloads.measure import device as devices
from stepscope.workloads.measure import rows
from stepscope.workloads.measure.identity import identity_by_uuid


class NVMLError(Exception):
    pass


class FakeNVML:
    """The slice of pynvml that stepscope uses, over a table of devices."""

    def __init__(self, gpus: dict[str, dict], driver="550.54.15", as_bytes=False, init_fails=False):
        self.gpus, self.driver, self.as_bytes, self.init_fails = gpus, driver, as_bytes, init_fails
        self.initialised = 0

    def _out(self, text: str):
        return text.encode() if self.as_bytes else text

    def nvmlInit(self):
        if self.init_fails:
            raise NVMLError("NVML Shared Library Not Found")
        self.initialised += 1

    def nvmlShutdown(self):
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self):
        return self._out(self.driver)

    def nvmlDeviceGetHandleByUUID(self, uuid):
        if uuid not in self.gpus:
            raise NVMLError("Not Found")
        return uuid

    def nvmlDeviceGetName(self, handle):
        return self._out(self.gpus[handle]["name"])

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(total=self.gpus[handle]["memory"], free=0, used=0)


H100_SXM = "GPU-1b8a6f43-3c7e-5d9a-a0b1-000000000001"
H100_PCIE = "GPU-1b8a6f43-3c7e-5d9a-a0b1-000000000002"
GPUS = {
    H100_SXM: {"name": "NVIDIA H100 80GB HBM3", "memory": 85520809984},
    H100_PCIE: {"name": "NVIDIA H100 PCIe", "memory": 85520809984},
}


def fake_torch(uuid: str, name: str = "NVIDIA H100"):
    props = SimpleNamespace(
        name=name, total_memory=85520809984, multi_processor_count=132, major=9, minor=0,
        uuid=uuid.removeprefix("GPU-"),
    )
    return SimpleNamespace(
        __version__="2.5.1+cu124",
        version=SimpleNamespace(cuda="12.4"),
        backends=SimpleNamespace(cudnn=SimpleNamespace(version=lambda: 90100)),
        get_num_threads=lambda: 16,
        cuda=SimpleNamespace(get_device_properties=lambda i: props, current_device=lambda: 0, is_available=lambda: True),
        device=lambda kind, index=None: SimpleNamespace(type=kind, index=index),
    )


@pytest.mark.parametrize(("uuid", "name"), [(H100_SXM, "NVIDIA H100 80GB HBM3"), (H100_PCIE, "NVIDIA H100 PCIe")])
@pytest.mark.parametrize("as_bytes", [False, True])
def test_cuda_facts_match_nvml_by_uuid(uuid, name, as_bytes):
    t = fake_torch(uuid)
    nvml = FakeNVML(GPUS, as_bytes=as_bytes)
    facts = devices.describe(t, SimpleNamespace(type="cuda", index=0), nvml=nvml)
    assert facts.device_uuid == uuid
    assert facts.device_name == name  # NVML's exact name tells SXM from PCIe
    assert facts.driver_version == "550.54.15"
    assert facts.sm_count == 132 and facts.compute_capability == "9.0"
    assert facts.device_memory_bytes == 85520809984
    assert facts.cuda_version == "12.4" and facts.cudnn_version == "90100"
    assert nvml.initialised == 0  # every init is shut down


def test_without_nvml_cuda_facts_come_from_torch_alone():
    t = fake_torch(H100_SXM, name="NVIDIA H100 80GB HBM3")
    facts = devices.describe(t, SimpleNamespace(type="cuda", index=0), nvml=FakeNVML({}, init_fails=True))
    assert facts.device_name == "NVIDIA H100 80GB HBM3" and facts.driver_version is None


def test_unknown_uuid_keeps_torch_facts():
    facts = identity_by_uuid("GPU-unknown", FakeNVML(GPUS))
    assert facts is None


def test_cpu_facts_on_this_machine():
    facts = devices.describe(torch, torch.device("cpu"))
    assert facts.device_kind == "cpu" and facts.device_name
    assert facts.device_uuid == devices.cpu_uuid(facts.host) and facts.sm_count is None
    assert facts.cpu_model == facts.device_name and facts.host_memory_bytes > 2**20
    assert facts.torch_version == torch.__version__ and facts.cpu_count >= 1


def test_pick_device():
    assert devices.pick_device(torch, "cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert devices.pick_device(torch, "auto").type == "cpu"
        with pytest.raises(devices.DeviceError, match="cuda was asked for"):
            devices.pick_device(torch, "cuda")


def test_real_nvml_without_a_driver_gives_no_facts():
    if torch.cuda.is_available():
        pytest.skip("a driver is present")
    assert identity_by_uuid(H100_SXM) is None  # the real pynvml: nvmlInit fails, nothing raises


def test_a_mig_instance_is_found_under_its_mig_uuid():
    mig = "MIG-1b8a6f43-3c7e-5d9a-a0b1-000000000009"
    t = fake_torch("GPU-" + mig.removeprefix("MIG-"))  # torch gives the MIG instance's UUID bare
    nvml = FakeNVML({mig: {"name": "NVIDIA H100 80GB HBM3 MIG 1g.10gb", "memory": 10 * 2**30}})
    facts = devices.describe(t, SimpleNamespace(type="cuda", index=0), nvml=nvml)
    assert facts.device_uuid == mig and facts.device_name.endswith("MIG 1g.10gb")
    assert facts.identity.gpu_variant == "H100-SXM-80GB"  # the parent board


def test_a_device_without_a_uuid_still_gets_one_key_for_trials_and_devices():
    t = fake_torch("GPU-x")
    t.cuda.get_device_properties(0).uuid = None
    facts = devices.describe(t, SimpleNamespace(type="cuda", index=0), nvml=FakeNVML({}))
    row = rows.device_row(facts, sweep_id="s", trial_id="t", node_id=None, observed_at=None)
    assert facts.device_uuid == row["device_uuid"] == f"GPU-unknown-{facts.host}-0"


@pytest.mark.gpu
def test_real_cuda_device_is_described():
    facts = devices.describe(torch, torch.device("cuda", 0))
    assert facts.device_uuid.startswith(("GPU-", "MIG-"))
    assert facts.driver_version and facts.sm_count > 0
