"""NVML's memory figures as they come in containers and on newer drivers.

The stand-in is nvml_fakes.FakeNVML: v1 `used` counts the driver's reserve, v2 `used`
leaves it out; a process may be listed with usedGpuMemory 0 (newer drivers in containers
list the pid but not its memory), None (pynvml's reading of NVML_VALUE_NOT_AVAILABLE) or
the raw sentinel (older bindings). The right values are the fake's own parts, added up by
hand here.
"""

from __future__ import annotations

import inspect
import os

import pynvml
import pytest
from nvml_fakes import GIB, MIB, FakeNVML

from stepscope.workloads.measure.memory import nvml_used_bytes
from stepscope.workloads.measure.nvml import device_used_bytes, not_available

UUID = "GPU-1b8a6f43-3c7e-5d9a-a0b1-000000000001"
RESERVE = 900 * MIB  # what the driver keeps for itself on an idle A100 (v1 counts it as used)
TORCH_RESERVED = 6 * GIB  # this process's torch pool at the moment NVML is read
CONTEXT = 500 * MIB  # its CUDA context and library workspaces
OTHER = 3 * GIB  # another process on the same GPU


def board(procs, allocated=TORCH_RESERVED + CONTEXT + OTHER):
    return {UUID: {"name": "NVIDIA A100-SXM4-80GB", "memory": 80 * GIB, "power_mw": 400_000,
                   "allocated": allocated, "reserved": RESERVE, "procs": procs}}


ME = os.getpid()


def test_a_positive_process_figure_is_the_process_scope():
    nvml = FakeNVML(board([(1, OTHER), (ME, TORCH_RESERVED + CONTEXT)]))
    assert nvml_used_bytes(UUID, nvml=nvml) == (TORCH_RESERVED + CONTEXT, "process")
    assert nvml.initialised == 0


@pytest.mark.parametrize(("used", "raw"), [
    (0, False),  # a newer driver in a container: the pid is listed, its memory is not
    (None, False),  # pynvml turned NVML_VALUE_NOT_AVAILABLE into None
    (None, True),  # an older binding passed the sentinel itself, 2**64 - 1
])
def test_a_process_listed_without_a_reading_falls_back_to_the_device(used, raw):
    nvml = FakeNVML(board([(1, OTHER), (ME, used)]), raw_sentinel=raw)
    got, scope = nvml_used_bytes(UUID, nvml=nvml)
    # Every process's allocations on the device, the driver's reserve left out (v2).
    assert (got, scope) == (TORCH_RESERVED + CONTEXT + OTHER, "device")


def test_device_scope_uses_v2_used_which_leaves_out_the_driver_reserve():
    nvml = FakeNVML(board([]), v2_memory=True)
    assert nvml_used_bytes(UUID, nvml=nvml) == (TORCH_RESERVED + CONTEXT + OTHER, "device")
    assert ("nvmlDeviceGetMemoryInfo", UUID) in nvml.calls


def test_without_the_v2_call_v1_is_read_reserve_included():
    # A driver without nvmlDeviceGetMemoryInfo_v2: v1, whose used includes the reserve.
    nvml = FakeNVML(board([]), v2_memory=False)
    assert nvml_used_bytes(UUID, nvml=nvml) == (TORCH_RESERVED + CONTEXT + OTHER + RESERVE, "device")

    class OldBinding(FakeNVML):  # a pynvml before the `version` argument
        nvmlMemory_v2 = property()

        def nvmlDeviceGetMemoryInfo(self, handle):
            return super().nvmlDeviceGetMemoryInfo(handle)

    assert device_used_bytes(OldBinding(board([])), UUID) == TORCH_RESERVED + CONTEXT + OTHER + RESERVE


def test_an_idle_device_reads_zero_used_under_v2_and_the_reserve_under_v1():
    nvml = FakeNVML(board([], allocated=0))
    assert device_used_bytes(nvml, UUID) == 0
    assert FakeNVML(board([], allocated=0), v2_memory=False).nvmlDeviceGetMemoryInfo(UUID).used == RESERVE


def test_the_sentinel_is_pynvmls():
    # NVML_VALUE_NOT_AVAILABLE for an unsigned long long: every bit set.
    assert not_available(pynvml) == (1 << 64) - 1 == not_available(FakeNVML({}))
    assert not_available(object()) == (1 << 64) - 1  # a binding without the constant


def test_the_installed_pynvml_has_the_v2_memory_call_we_use():
    # nvmlDeviceGetMemoryInfo(handle, version=nvmlMemory_v2) -> a struct with `reserved`.
    assert "version" in inspect.signature(pynvml.nvmlDeviceGetMemoryInfo).parameters
    assert {"total", "reserved", "free", "used"} <= {f for f, _ in pynvml.c_nvmlMemory_v2_t._fields_}
    assert isinstance(pynvml.nvmlMemory_v2, int)
