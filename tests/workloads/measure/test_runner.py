"""The runner on a CPU: phases, precisions, statuses, rows. Real torch, real Parquet."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from stepscope.storage.schema import DEVICES, PHASES, STEPS, TRIALS
from stepscope.storage.store import Store
from stepscope.workloads.measure.runner import run_trial
from stepscope.workloads.registry import resolve_params
from stepscope.workloads.trial import Trial

FIXTURES = Path(__file__).parents[2] / "fixtures"
sys.path.insert(0, str(FIXTURES))
import probe  # noqa: E402


def make_trial(**params) -> Trial:
    return Trial(index=0, trial_id="t0", repeat=0, gpu=None, params=resolve_params(params))


def read(store_dir, table, trial_id="t0", sweep="s"):
    return pq.read_table(f"{store_dir}/{table}/sweep_id={sweep}/{trial_id}.parquet").to_pylist()


def test_phase_times_match_known_sleeps(tmp_path):
    want = {"data": 6.0, "forward": 12.0, "loss": 3.0, "backward": 9.0, "optimizer": 5.0}
    trial = make_trial(workload="sleepy:build", iterations=8, warmup=1, batch_size=2,
                       **{f"{k}_ms": v for k, v in want.items()})
    row = run_trial(trial, "s", Store(str(tmp_path)), search_paths=[str(FIXTURES)])
    assert row["status"] == "ok", row["error"]
    steps = [s for s in read(tmp_path, "steps") if not s["is_warmup"]]
    for phase, ms in want.items():
        got = statistics.median(s["duration_ms"] for s in steps if s["phase"] == phase)
        # A sleep never ends early; it may end 1-2 ms late on a loaded machine (1.5 ms seen
        # with the suite on 3 workers). The bound stays under the smallest phase (3 ms), so
        # a phase that swallowed another's time would still fail.
        assert ms <= got <= ms + 2.0 + 0.03 * ms, (phase, got)
    assert all(s["duration_ms"] == s["host_ms"] for s in steps)  # on a CPU wall time is device time


def test_rows_have_every_phase_of_every_step_in_order(tmp_path):
    trial = make_trial(workload="mlp", depth=1, width=8, input_dim=8, batch_size=4, iterations=3, warmup=2)
    row = run_trial(trial, "s", Store(str(tmp_path)))
    assert row["status"] == "ok"
    steps = read(tmp_path, "steps")
    assert len(steps) == 5 * len(PHASES)
    assert [s["phase"] for s in steps[:6]] == list(PHASES)
    assert [s["phase_index"] for s in steps[:6]] == list(range(6))
    assert [s["is_warmup"] for s in steps[::6]] == [True, True, False, False, False]
    assert [s["iteration"] for s in steps[::6]] == [0, 1, 2, 3, 4]
    (stored,) = read(tmp_path, "trials")
    assert set(stored) == set(TRIALS.names)
    assert stored["measured_steps"] == 3 and stored["device_kind"] == "cpu"
    assert stored["param_count"] == 8 * 8 + 8 + 8 * 10 + 10
    assert stored["samples_per_s"] == pytest.approx(4 * 3 / stored["measured_wall_s"])
    assert stored["model_to_device_ms"] >= 0 and stored["final_loss"] > 0
    assert pq.read_schema(f"{tmp_path}/steps/sweep_id=s/t0.parquet").equals(STEPS)
    assert all(s["gpu_gap_ms"] is None for s in steps)  # no device to sit idle on a CPU
    (device,) = read(tmp_path, "devices")
    assert set(device) == set(DEVICES.names)
    assert device["device_uuid"] == stored["device_uuid"] == f"CPU-{stored['host']}"
    assert device["device_kind"] == "cpu" and device["cpu_model"] == stored["device_name"]
    assert device["cpu_count"] == stored["cpu_count"] and device["host_memory_bytes"] > 0
    assert device["observed_at"] == stored["started_at"]


@pytest.mark.parametrize(
    ("precision", "param", "inp", "autocast", "matmul"),
    [
        ("fp32", torch.float32, torch.float32, False, "highest"),
        ("tf32", torch.float32, torch.float32, False, "high"),
        ("bf16", torch.bfloat16, torch.bfloat16, False, "highest"),
        ("fp16", torch.float16, torch.float16, False, "highest"),
        ("amp_bf16", torch.float32, torch.float32, True, "highest"),
        ("amp_fp16", torch.float32, torch.float32, True, "highest"),
    ],
)
def test_precision_modes(precision, param, inp, autocast, matmul):
    probe.SEEN.clear()
    trial = make_trial(workload="probe:build", precision=precision, iterations=2, warmup=0, batch_size=4)
    row = run_trial(trial, "s", None, search_paths=[str(FIXTURES)])
    assert row["status"] == "ok", row["error"]
    seen = probe.SEEN[-1]
    assert (seen["param_dtype"], seen["input_dtype"], seen["autocast"]) == (param, inp, autocast)
    assert seen["matmul_precision"] == matmul
    if precision.startswith("amp_"):
        assert seen["output_dtype"] == {"amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}[precision]


def test_failure_becomes_a_failed_row_with_the_steps_that_ran(tmp_path):
    trial = make_trial(workload="sleepy:build", fail_at=3, iterations=5, warmup=1)
    row = run_trial(trial, "s", Store(str(tmp_path)), search_paths=[str(FIXTURES)])
    assert row["status"] == "failed"
    assert row["error"].startswith("RuntimeError: boom: asked to fail (at sleepy.py:")
    assert row["samples_per_s"] is None
    assert len(read(tmp_path, "steps")) == 3 * len(PHASES)
    assert read(tmp_path, "trials")[0]["status"] == "failed"


@pytest.mark.parametrize(("kind", "error"), [
    ("unprintable", "Unprintable: (its message cannot be shown: ValueError in __str__) (at raisers.py:"),
    ("base_exception", "Custom: a BaseException subclass (at raisers.py:"),
    ("generator_exit", "GeneratorExit: closed (at raisers.py:"),
])
def test_any_exception_of_the_workload_becomes_a_failed_row(kind, error, tmp_path):
    trial = make_trial(workload="raisers:build", raise_kind=kind, iterations=4, warmup=0, count_flops=False)
    row = run_trial(trial, "s", Store(str(tmp_path)), search_paths=[str(FIXTURES)])
    assert (row["status"], row["error"][: len(error)]) == ("failed", error)
    assert read(tmp_path, "trials")[0]["error"] == row["error"]
    assert len(read(tmp_path, "steps")) == 2 * len(PHASES)  # the two steps before the third forward


def test_out_of_memory_becomes_an_oom_row(tmp_path):
    trial = make_trial(workload="probe:build", raise_oom=True)
    row = run_trial(trial, "s", Store(str(tmp_path)), search_paths=[str(FIXTURES)])
    assert row["status"] == "oom"
    assert "out of memory" in row["error"]


def test_unimportable_custom_workload_is_a_failed_row(tmp_path):
    row = run_trial(make_trial(workload="nosuchmodule:build"), "s", Store(str(tmp_path)))
    assert row["status"] == "failed" and "ModuleNotFoundError" in row["error"]
    assert read(tmp_path, "steps") == []


def test_cuda_requested_without_cuda_fails_clearly(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    row = run_trial(make_trial(workload="mlp", device="cuda"), "s", None)
    assert row["status"] == "failed"
    assert "cuda was asked for" in row["error"]


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_optimizers_train(optimizer):
    trial = make_trial(workload="mlp", depth=1, width=16, input_dim=8, batch_size=8, optimizer=optimizer,
                       iterations=3, warmup=0, lr=0.01)
    row = run_trial(trial, "s", None)
    assert row["status"] == "ok" and row["final_loss"] > 0


def test_same_seed_same_loss():
    a = run_trial(make_trial(workload="mlp", depth=1, width=8, input_dim=8, iterations=2, warmup=0, seed=3), "s", None)
    b = run_trial(make_trial(workload="mlp", depth=1, width=8, input_dim=8, iterations=2, warmup=0, seed=3), "s", None)
    c = run_trial(make_trial(workload="mlp", depth=1, width=8, input_dim=8, iterations=2, warmup=0, seed=4), "s", None)
    assert a["final_loss"] == b["final_loss"] != c["final_loss"]


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "tf32", "amp_bf16"])
def test_cuda_phases_add_up_to_the_step(tmp_path, precision):
    """On a GPU: device phase times are CUDA-event times and the rows are complete."""
    trial = make_trial(workload="mlp", batch_size=256, precision=precision, iterations=10, warmup=3)
    row = run_trial(trial, "s", Store(str(tmp_path)))
    assert row["status"] == "ok", row["error"]
    assert row["device_kind"] == "cuda" and row["device_uuid"]
    steps = [s for s in read(tmp_path, "steps") if not s["is_warmup"]]
    assert all(s["duration_ms"] >= 0 and s["gpu_gap_ms"] >= 0 for s in steps)
    per_step = sum(s["duration_ms"] for s in steps) / 10
    assert per_step <= row["measured_wall_s"] * 1e3 / 10 * 1.05
    # Phases and the gaps between them cover the synchronised host-timed steps.
    covered = sum(s["duration_ms"] + s["gpu_gap_ms"] for s in steps) / 10
    assert covered == pytest.approx(row["measured_wall_s"] * 1e3 / 10, rel=0.05)
    assert all(s["peak_allocated_bytes"] <= s["peak_reserved_bytes"] for s in steps)
    assert row["cuda_context_bytes"] > 0 and row["non_torch_bytes"] > 0
    assert row["nvml_memory_scope"] in ("process", "device")
    # NVML sampled during the measured steps: at their start, at their end, and between.
    assert row["nvml_samples"] >= 2 and row["sm_clock_mhz_min"] > 0 and row["power_draw_w_max"] > 0
    assert row["throttle_reasons"] is not None
    (device,) = read(tmp_path, "devices")
    assert device["device_uuid"] == row["device_uuid"] and device["gpu_variant"]
    assert device["sm_clock_max_mhz"] > 0 and device["power_limit_w"] > 0


def test_flops_and_mfu_of_a_cpu_trial(tmp_path, monkeypatch):
    """FLOPs counted exactly in an untimed pass; MFU against the node's measured peak,
    which is measured once and then read from the cache."""
    from stepscope.workloads.measure.flop_peaks import matmul

    monkeypatch.setenv("STEPSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    trial = make_trial(workload="mlp", depth=2, width=32, input_dim=16, num_classes=10, batch_size=8,
                       iterations=5, warmup=1, optimizer="adam")
    row = run_trial(trial, "s", None)
    assert row["status"] == "ok" and row["flops_error"] is None
    assert row["flops_forward"] == 2 * 8 * (16 * 32 + 32 * 32 + 32 * 10)
    assert row["flops_backward"] > row["flops_forward"]
    assert row["achieved_tflops"] > 0 and row["peak_tflops_measured"] > 0
    assert 0 < row["mfu_measured"] <= 1
    assert row["mfu_datasheet"] is None and row["gpu_variant"] is None  # no datasheet for a CPU
    assert (tmp_path / "cache" / "matmul_peaks.json").exists()

    def measure_again(*args, **kwargs):
        raise AssertionError("the peak is measured once per node, then read from the cache")

    monkeypatch.setattr(matmul, "measure", measure_again)
    again = run_trial(trial, "s", None)
    assert again["peak_tflops_measured"] == row["peak_tflops_measured"]


def test_gpt_flops_counted_and_analytic_agree(tmp_path, monkeypatch):
    monkeypatch.setenv("STEPSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    row = run_trial(make_trial(workload="gpt", batch_size=2, iterations=1, warmup=0), "s", None)
    counted = row["flops_forward"] + row["flops_backward"]
    assert abs(counted / row["flops_analytic"] - 1) < 0.05


def test_flops_can_be_switched_off_and_never_fail_a_trial(tmp_path, monkeypatch):
    monkeypatch.setenv("STEPSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    off = run_trial(make_trial(workload="mlp", depth=1, width=8, input_dim=8, iterations=1, warmup=0,
                               count_flops=False), "s", None)
    assert off["status"] == "ok" and off["flops_forward"] is None and off["mfu_measured"] is None
    from stepscope.workloads.measure import utilization

    def broken(*args, **kwargs):
        raise RuntimeError("no meta kernel and no cpu either")

    monkeypatch.setattr("stepscope.workloads.measure.flops.count_step_flops", broken)
    row = run_trial(make_trial(workload="mlp", depth=1, width=8, input_dim=8, iterations=1, warmup=0), "s", None)
    assert row["status"] == "ok" and row["flops_forward"] is None
    assert row["flops_error"] == "RuntimeError: no meta kernel and no cpu either"
    assert utilization.COLUMNS[0] == "flops_forward"


def test_memory_bytes_of_mlp_fp32_adam_are_exact(tmp_path, monkeypatch):
    """Parameters 4N, gradients 4N, Adam's two moments 8N bytes; bf16 halves the first two."""
    monkeypatch.setenv("STEPSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    shape = {"workload": "mlp", "depth": 2, "width": 64, "input_dim": 32, "num_classes": 10,
             "iterations": 2, "warmup": 1, "optimizer": "adam", "count_flops": False}
    n = (32 * 64 + 64) + (64 * 64 + 64) + (64 * 10 + 10)
    row = run_trial(make_trial(batch_size=16, **shape), "s", None)
    assert row["param_count"] == n
    assert (row["param_bytes"], row["grad_bytes"], row["optimizer_state_bytes"]) == (4 * n, 4 * n, 8 * n)
    bf16 = run_trial(make_trial(batch_size=16, precision="bf16", **shape), "s", None)
    assert (bf16["param_bytes"], bf16["grad_bytes"]) == (2 * n, 2 * n)


def test_activation_bytes_scale_with_the_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("STEPSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    shape = {"workload": "mlp", "depth": 3, "width": 256, "input_dim": 128, "iterations": 1, "warmup": 1,
             "count_flops": False}
    small = run_trial(make_trial(batch_size=64, **shape), "s", None)["activation_bytes"]
    large = run_trial(make_trial(batch_size=128, **shape), "s", None)["activation_bytes"]
    assert small > 0 and large / small == pytest.approx(2.0, abs=0.05)
    no_warmup = run_trial(make_trial(batch_size=64, **{**shape, "warmup": 0}), "s", None)
    assert no_warmup["activation_bytes"] == small  # counted on step 0, warmup or not


def test_peak_rss_per_phase_on_a_cpu(tmp_path):
    trial = make_trial(workload="mlp", depth=1, width=8, input_dim=8, iterations=2, warmup=0, count_flops=False)
    run_trial(trial, "s", Store(str(tmp_path)))
    steps = read(tmp_path, "steps")
    assert all(s["peak_rss_bytes"] > 10_000_000 for s in steps)  # a Python process with torch: tens of MB
    assert all(s["peak_allocated_bytes"] is None and s["peak_reserved_bytes"] is None for s in steps)


NONFINITE = {"workload": "nonfinite:build", "iterations": 5, "warmup": 5, "batch_size": 2, "count_flops": False}


@pytest.mark.parametrize(("params", "step", "error"), [
    ({"bad": "nan", "bad_from": 7}, 7, "loss became nan at iteration 7 (measured step 2)"),
    ({"bad": "inf", "bad_from": 1}, 1, "loss became inf at iteration 1 (warmup step 1)"),
    ({"bad": "-inf", "bad_from": 5}, 5, "loss became -inf at iteration 5 (measured step 0)"),
    ({"bad": "nan", "bad_from": 0, "bad_in": "model"}, 0, "loss became nan at iteration 0 (warmup step 0)"),
    ({"bad": "nan", "bad_from": 9, "loss_2d": True}, 9, "loss became nan at iteration 9 (measured step 4)"),
    # (2**8)² = 65536 is past fp16's largest value, 65504: the loss overflows to inf at step 8.
    ({"overflow": True, "precision": "fp16"}, 8, "loss became inf at iteration 8 (measured step 3)"),
])
def test_a_loss_that_is_not_finite_makes_a_nonfinite_trial_with_its_steps(tmp_path, params, step, error):
    row = run_trial(make_trial(**NONFINITE, **params), "s", Store(str(tmp_path)), search_paths=[str(FIXTURES)])
    assert (row["status"], row["nonfinite_step"], row["error"]) == ("nonfinite", step, error)
    (stored,) = read(tmp_path, "trials")
    assert (stored["status"], stored["nonfinite_step"], stored["error"]) == ("nonfinite", step, error)
    # Every step ran and its timings are kept, throughput too: only the loss is wrong.
    assert len(read(tmp_path, "steps")) == 10 * len(PHASES)
    assert stored["measured_steps"] == 5 and stored["samples_per_s"] > 0


def test_a_finite_loss_leaves_the_trial_ok():
    # The same (2**step)² as the fp16 case, in fp32: 512² = 262144 at the last step, finite.
    row = run_trial(make_trial(**NONFINITE, overflow=True), "s", None, search_paths=[str(FIXTURES)])
    assert (row["status"], row["nonfinite_step"], row["error"]) == ("ok", None, None)
    assert row["final_loss"] == 2.0 ** 18


def test_a_builtin_in_fp16_with_a_huge_learning_rate_is_nonfinite_from_its_second_step():
    # Step 0's loss comes from the initial weights; one SGD step at lr 1e4 sends fp16 weights,
    # then the logits, past 65504, and cross-entropy of inf logits is nan.
    shape = {"workload": "mlp", "depth": 1, "width": 16, "input_dim": 8, "batch_size": 4, "iterations": 3,
             "warmup": 1, "count_flops": False}
    row = run_trial(make_trial(precision="fp16", lr=1e4, **shape), "s", None)
    assert (row["status"], row["nonfinite_step"]) == ("nonfinite", 1)
    assert row["error"] == "loss became nan at iteration 1 (measured step 0)"
    assert run_trial(make_trial(precision="fp32", **shape), "s", None)["status"] == "ok"


def test_a_failure_after_the_loss_went_nan_stays_failed_and_says_where_it_went():
    row = run_trial(make_trial(**NONFINITE, bad="nan", bad_from=2, fail_at=4), "s", None, search_paths=[str(FIXTURES)])
    assert row["status"] == "failed" and row["error"].startswith("RuntimeError: gave up at step 4")
    assert row["nonfinite_step"] == 2


@pytest.mark.gpu
def test_the_host_runs_ahead_of_the_gpu_between_steps(tmp_path):
    """50M cycles of device sleep per forward (>= 25 ms at any clock up to 2 GHz) against
    2 ms of host sleep in `data`: a loop that waited for the GPU after every step would
    leave it idle through each `data` phase (gap >= 2 ms); the runner runs ahead, so the
    GPU's queue never runs dry at a step boundary and the gap is ~0."""
    trial = make_trial(workload="sleepy:build", data_ms=2, forward_gpu_cycles=50_000_000,
                       iterations=8, warmup=2, device="cuda", count_flops=False)
    row = run_trial(trial, "s", Store(str(tmp_path)), search_paths=[str(FIXTURES)])
    assert row["status"] == "ok", row["error"]
    steps = read(tmp_path, "steps")
    gaps = [s["gpu_gap_ms"] for s in steps if s["phase"] == "data" and s["iteration"] >= 3]
    forward = [s["duration_ms"] for s in steps if s["phase"] == "forward"]
    assert min(forward) > 10  # the device work is there
    assert max(gaps) < 0.5, gaps


@pytest.mark.gpu
def test_a_nonfinite_loss_on_a_gpu(tmp_path):
    row = run_trial(make_trial(**NONFINITE, bad="nan", bad_from=7, device="cuda"), "s", Store(str(tmp_path)),
                    search_paths=[str(FIXTURES)])
    assert (row["status"], row["nonfinite_step"], row["device_kind"]) == ("nonfinite", 7, "cuda")
    assert row["error"] == "loss became nan at iteration 7 (measured step 2)"
    assert len(read(tmp_path, "steps")) == 10 * len(PHASES)


class LaggingEvent:
    """A CUDA event of a device that finishes nothing until the host waits for it: every
    step's times must be read late, by the ring's wait or after the loop, and kept."""

    clock = 0
    broken = False  # a device in an error state: waiting raises

    def __init__(self) -> None:
        self.at = None
        self.done = False

    def record(self) -> None:
        LaggingEvent.clock += 1
        self.at, self.done = LaggingEvent.clock, False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        if LaggingEvent.broken:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        self.done = True  # and every event before it on the stream: elapsed_time checks

    def elapsed_time(self, end: LaggingEvent) -> float:
        return float(end.at - self.at)


@pytest.fixture
def lagging_device(monkeypatch):
    from stepscope.workloads.measure import runner, timing

    LaggingEvent.broken, LaggingEvent.clock = False, 0
    timers = []

    def make_timer(device_type, n_phases, torch_module=None, between=timing._nothing):
        timers.append(timing.CudaPhaseTimer(n_phases, LaggingEvent, between))
        return timers[-1]

    monkeypatch.setattr(runner, "make_timer", make_timer)
    return timers


def test_device_times_read_late_are_kept_for_every_step(tmp_path, lagging_device):
    """The runner's GPU path on the CPU: no step's events are complete when it ends, so
    its device times arrive later (the ring's wait, then the drain after the loop). Every
    phase's device time is one event tick, its gap one tick: none is the host's stand-in."""
    trial = make_trial(workload="mlp", depth=1, width=8, input_dim=8, batch_size=4, iterations=9, warmup=2)
    row = run_trial(trial, "s", Store(str(tmp_path)))
    assert row["status"] == "ok"
    steps = read(tmp_path, "steps")
    assert len(steps) == 11 * len(PHASES)
    assert all(s["duration_ms"] == 1.0 for s in steps)
    assert [s["gpu_gap_ms"] for s in steps[:6]] == [None] + [1.0] * 5
    assert all(s["gpu_gap_ms"] == 1.0 for s in steps[6:])


def test_a_failure_keeps_only_steps_whose_device_times_were_read(tmp_path, lagging_device):
    """The workload fails in step 7, and step 6's events never complete (the device is in
    an error state): steps 0-2 were read while the loop ran (the ring waited for them),
    3-5 after the failure; they are kept, and step 6, with no device time, is dropped."""
    trial = make_trial(workload="sleepy:build", fail_at=7, iterations=8, warmup=1)
    original = LaggingEvent.synchronize

    def synchronize(self):
        if self.at is not None and self.at > 6 * 2 * len(PHASES):  # step 7's and later never complete
            LaggingEvent.broken = True
        original(self)

    LaggingEvent.synchronize = synchronize
    try:
        row = run_trial(trial, "s", Store(str(tmp_path)), search_paths=[str(FIXTURES)])
    finally:
        LaggingEvent.synchronize = original
    assert row["status"] == "failed" and "boom" in row["error"]
    iterations = sorted({s["iteration"] for s in read(tmp_path, "steps")})
    assert iterations == list(range(6))
    assert all(s["duration_ms"] == 1.0 for s in read(tmp_path, "steps"))


def test_a_negative_difference_of_two_readings_is_stored_as_null():
    """cuda_context_bytes and non_torch_bytes are NVML's figure minus torch's, read apart:
    a difference below zero (NVML's figure missing this process's memory) is no size."""
    from stepscope.workloads.measure.runner import _not_negative

    assert _not_negative(-1) is None and _not_negative(0) == 0 and _not_negative(5) == 5
