"""The NVML sampler that watches the GPU while the measured steps run.

The stand-in is nvml_fakes.FakeNVML, whose clock, power, temperature and clock-reason
readings follow a script and are logged as handed out; the summaries are checked
against those logs, reduced by hand (a sort for the median, a loop for min and max).
"""

from __future__ import annotations

import dataclasses
import threading
import time

import pynvml
import pytest
from nvml_fakes import MIB, FakeNVML

from stepscope.storage.schema import TrialStatus, check_rows
from stepscope.workloads.measure import rows
from stepscope.workloads.measure import sampler as sampler_module
from stepscope.workloads.measure.records import DeviceSamples, Measured
from stepscope.workloads.measure.sampler import NvmlSampler, describe_reasons, reason_names
from stepscope.workloads.registry import resolve_params
from stepscope.workloads.trial import Trial

H100 = "GPU-1b8a6f43-3c7e-5d9a-a0b1-000000000001"
MIG = "MIG-1b8a6f43-3c7e-5d9a-a0b1-000000000002"
F = FakeNVML  # its reason bits: SwPowerCap 0x1, ApplicationsClocksSetting 0x2, SwThermal 0x4, HwSlowdown 0x8, GpuIdle 0x10


def gpus(**script):
    board = {"name": "NVIDIA H100 80GB HBM3", "memory": 81559 * MIB, "power_mw": 700_000, "clocks": {11: 0, 12: 0},
             "sm_mhz": [1980, 1755, 1410, 1980], "mem_mhz": [2619, 2619, 2619, 1593],
             "power_usage_mw": [120_000, 690_000, 701_500, 655_250], "temp_c": [41, 63, 71, 68],
             "reasons": [F.nvmlClocksEventReasonGpuIdle, 0, F.nvmlClocksEventReasonSwPowerCap,
                         F.nvmlClocksEventReasonSwPowerCap | F.nvmlClocksEventReasonHwSlowdown]}
    board.update(script)
    return {H100: board, MIG: {"name": "NVIDIA H100 80GB HBM3 MIG 1g.10gb", "memory": 9856 * MIB,
                               "parent": H100, "sm_count": 16}}


def median(values):
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def expected(nvml: FakeNVML, count: int) -> DeviceSamples:
    sm, mem = nvml.returned["sm_mhz"], nvml.returned["mem_mhz"]
    power, temp = nvml.returned["power_usage_mw"], nvml.returned["temp_c"]
    lowest = sm[0]
    for v in sm:
        lowest = v if v < lowest else lowest
    seen = 0
    for r in nvml.returned["reasons"]:
        seen |= r
    names = [name for bit, name in ((0x1, "sw_power_cap"), (0x2, "applications_clocks_setting"),
                                    (0x4, "sw_thermal_slowdown"), (0x8, "hw_slowdown")) if seen & bit]
    return DeviceSamples(
        sm_clock_mhz_min=lowest, sm_clock_mhz_p50=float(median(sm)), mem_clock_mhz_p50=float(median(mem)),
        power_draw_w_p50=median(power) / 1000, power_draw_w_max=sorted(power)[-1] / 1000,
        temperature_c_max=sorted(temp)[-1], throttle_reasons=",".join(names), nvml_samples=count,
    )


def test_a_sample_at_start_and_at_stop_and_each_one_between():
    nvml = FakeNVML(gpus())
    sampler = NvmlSampler(H100, interval_s=60, nvml=nvml).start()  # the thread will not wake in this test
    assert nvml.initialised == 1 and sampler.count == 1
    sampler.sample()
    sampler.sample()
    got = sampler.stop()
    assert got == expected(nvml, 4)
    assert got.sm_clock_mhz_min == 1410 and got.throttle_reasons == "sw_power_cap,hw_slowdown"  # idle left out
    assert nvml.initialised == 0
    assert sampler.stop() is got  # the same summary again


def test_the_thread_samples_every_interval():
    nvml = FakeNVML(gpus())
    sampler = NvmlSampler(H100, interval_s=0.01, nvml=nvml).start()
    time.sleep(0.2)
    got = sampler.stop()
    assert got.nvml_samples >= 5  # start + stop + the thread's; 20 intervals fit in 0.2 s
    assert got == expected(nvml, got.nvml_samples)


def test_a_hung_nvml_call_does_not_hang_stop(monkeypatch):
    monkeypatch.setattr(sampler_module, "JOIN_TIMEOUT_S", 0.05)
    gate = threading.Event()

    class Wedged(FakeNVML):  # a driver that stops answering the sampler thread
        def nvmlDeviceGetPowerUsage(self, handle):
            if threading.current_thread() is not threading.main_thread():
                gate.wait()
            return super().nvmlDeviceGetPowerUsage(handle)

    nvml = Wedged(gpus())
    sampler = NvmlSampler(H100, interval_s=0.01, nvml=nvml).start()
    time.sleep(0.05)
    t0 = time.perf_counter()
    got = sampler.stop()
    assert time.perf_counter() - t0 < 1.0 and got.nvml_samples >= 1
    assert nvml.initialised == 1  # not shut down under the thread still inside a call
    gate.set()


def test_a_short_loop_still_has_two_samples():
    nvml = FakeNVML(gpus())
    with NvmlSampler(H100, interval_s=60, nvml=nvml) as sampler:
        pass
    assert sampler.stop() == expected(nvml, 2)


def test_a_mig_slice_is_sampled_through_its_board():
    nvml = FakeNVML(gpus())
    got = NvmlSampler(MIG, interval_s=60, nvml=nvml).start().stop()
    assert got == expected(nvml, 2) and got.sm_clock_mhz_min is not None
    assert all(handle == H100 for fn, handle in nvml.calls if fn.startswith("nvmlDeviceGetClock"))


def test_torch_spelling_of_a_mig_uuid_is_found():
    nvml = FakeNVML(gpus())
    got = NvmlSampler("GPU-" + MIG.removeprefix("MIG-"), interval_s=60, nvml=nvml).start().stop()
    assert got.nvml_samples == 2


def test_an_old_driver_gives_the_reasons_under_the_older_name():
    nvml = FakeNVML(gpus(), unsupported={"nvmlDeviceGetCurrentClocksEventReasons"})
    assert NvmlSampler(H100, interval_s=60, nvml=nvml).start().stop() == expected(nvml, 2)


def test_unsupported_readings_are_none_and_not_asked_again():
    nvml = FakeNVML(gpus(), unsupported={"nvmlDeviceGetPowerUsage", "nvmlDeviceGetTemperature"})
    sampler = NvmlSampler(H100, interval_s=60, nvml=nvml).start()
    sampler.sample()
    got = sampler.stop()
    assert got.power_draw_w_p50 is None and got.temperature_c_max is None and got.nvml_samples == 3
    assert [fn for fn, _ in nvml.calls].count("nvmlDeviceGetPowerUsage") == 1


def test_an_idle_sample_s_clocks_and_power_are_left_out():
    """Samples NVML flags GpuIdle (before the first kernel arrived, after the last one)
    hold idle clocks and power, which would read as a throttle: only their temperature
    is kept."""
    idle = F.nvmlClocksEventReasonGpuIdle
    nvml = FakeNVML(gpus(reasons=[idle, 0, idle, 0, idle]))
    sampler = NvmlSampler(H100, interval_s=60, nvml=nvml).start()  # a sample at start...
    sampler.sample()
    sampler.sample()
    sampler.sample()
    got = sampler.stop()  # ...and one at stop: 5
    called = [fn for fn, _ in nvml.calls]
    assert called.count("nvmlDeviceGetTemperature") == 5
    assert called.count("nvmlDeviceGetPowerUsage") == 2
    assert len(sampler.sm_mhz) == len(sampler.mem_mhz) == 2 and got.nvml_samples == 5


def test_no_reason_seen_is_an_empty_list_not_null():
    nvml = FakeNVML(gpus(reasons=[0, F.nvmlClocksEventReasonGpuIdle]))
    assert NvmlSampler(H100, interval_s=60, nvml=nvml).start().stop().throttle_reasons == ""


@pytest.mark.parametrize("uuid", [None, "CPU-somehost"])
def test_a_cpu_is_a_no_op(uuid):
    nvml = FakeNVML(gpus())
    assert NvmlSampler(uuid, nvml=nvml).start().stop() == DeviceSamples()
    assert nvml.initialised == 0 and not nvml.calls


def test_no_driver_or_an_unknown_uuid_is_a_no_op():
    assert NvmlSampler(H100, nvml=FakeNVML(gpus(), init_fails=True)).start().stop() == DeviceSamples()
    nvml = FakeNVML(gpus())
    assert NvmlSampler("GPU-unknown", nvml=nvml).start().stop() == DeviceSamples()
    assert nvml.initialised == 0


def test_the_real_pynvml_without_a_driver_is_a_no_op():
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        assert NvmlSampler(H100).start().stop() == DeviceSamples()
    else:
        pynvml.nvmlShutdown()
        pytest.skip("a driver is present")


def test_a_bad_interval_is_refused():
    with pytest.raises(ValueError, match="interval_s: must be a positive number of seconds"):
        NvmlSampler(H100, interval_s=0)


def test_reason_names_come_from_pynvmls_constants():
    names = reason_names(pynvml)
    assert names[pynvml.nvmlClocksEventReasonSwPowerCap] == "SwPowerCap"
    assert names[pynvml.nvmlClocksEventReasonApplicationsClocksSetting] == "ApplicationsClocksSetting"  # not the alias
    assert names[pynvml.nvmlClocksThrottleReasonBoardLimit] == "BoardLimit"  # only under the older prefix
    mask = pynvml.nvmlClocksEventReasonGpuIdle | pynvml.nvmlClocksEventReasonHwThermalSlowdown | 1 << 40
    assert describe_reasons(mask, names) == f"hw_thermal_slowdown,{hex(1 << 40)}"


def test_samples_become_trials_columns():
    samples = DeviceSamples(sm_clock_mhz_min=1410, sm_clock_mhz_p50=1980.0, mem_clock_mhz_p50=2619.0,
                            power_draw_w_p50=690.0, power_draw_w_max=701.5, temperature_c_max=71,
                            throttle_reasons="sw_power_cap", nvml_samples=4)
    trial = Trial(index=0, trial_id="t", repeat=0, gpu=None, params=resolve_params({"workload": "mlp"}))
    row = rows.trial_row(trial, "s", Measured(samples=samples), TrialStatus.OK, None, rows.now(), None, 1)
    got = check_rows("trials", [row]).to_pylist()[0]
    assert {k: got[k] for k in dataclasses.asdict(samples)} == dataclasses.asdict(samples)
