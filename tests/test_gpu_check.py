"""bench/gpu_check.py on its CPU twin: every section that can run on a CPU runs, with the
same code as on a GPU; and each verdict fails when its figure is wrong."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402
from gpucheck import probes, report, sections  # noqa: E402

pytestmark = pytest.mark.slow

#: What the GPU image may lack: the check must not need any of them.
BLOCKED = ("ray", "duckdb", "yaml", "click")


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    """One run of the CPU twin, as on the GPU image (importing any of BLOCKED fails)."""
    tmp = tmp_path_factory.mktemp("gpu-check")
    blocked = tmp / "blocked"
    blocked.mkdir()
    for module in BLOCKED:
        (blocked / f"{module}.py").write_text(f"raise ImportError('{module} is not on the GPU image')\n")
    env = {**os.environ, "STEPSCOPE_CACHE_DIR": str(tmp / "cache"),
           "PYTHONPATH": os.pathsep.join([str(blocked), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--quick", "--no-tests",
         "--keep", str(tmp / "store")],
        capture_output=True, text=True, env=env, timeout=240,
    )
    return proc, tmp / "store"


def final_rows(stdout: str) -> dict[tuple[str, str], list[str]]:
    """The final table's rows by (section, check): [measured, ..., result, note] as text."""
    lines = stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("section ") and "result" in ln)
    # Column extents from the rule under the header: runs of dashes.
    spans = [m.span() for m in re.finditer(r"-+", lines[start + 1])]
    assert len(spans) == len(report.FINAL_HEADER)
    out = {}
    for ln in lines[start + 2:]:
        if not ln.strip() or ln.startswith("seconds:"):
            break
        cells = [ln[a:b].strip() for a, b in spans[:-1]] + [ln[spans[-1][0]:].strip()]
        out[(cells[0], cells[1])] = cells[2:]
    return out


def test_the_cpu_twin_runs_every_section_and_passes(twin):
    proc, store = twin
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[-1] == "gpu check: passed"
    rows = final_rows(proc.stdout)
    assert {section for section, _ in rows} == set(sections.SECTIONS)
    result = {key: cells[-2] for key, cells in rows.items()}
    # Skipped: exactly what a CPU cannot show, and the tests we asked it not to run.
    assert sorted(k for k, v in result.items() if v == "SKIP") == [
        ("host", "host work hidden behind device work"), ("tests", "pytest -m gpu")]
    for phase in ("data", "to_device", "forward", "loss", "backward", "optimizer"):
        assert result[("attribution", f"{phase}: device ms added")] == "PASS"
    assert [k for k, v in result.items() if k[0] == "precisions" and v == "PASS"] == [
        ("precisions", f"mlp {p}") for p in sections.PRECISIONS]
    assert result[("grid", "resnet fp32")] == result[("grid", "gpt fp32")] == "PASS"
    assert result[("forkserver", "server holds no CUDA context")] == "PASS"
    assert result[("nvml", "RSS grows by the tensor (CPU twin)")] == "PASS"
    assert result[("bookkeeping", "timer + memory peaks, per boundary")] == "PASS"
    assert all(v == "INFO" for k, v in result.items() if k[0] == "loops")  # a CPU's noise is above the goal
    # Progress carries timestamps, and each section says how long it took.
    assert lines[0].startswith("[") and "s] gpu check on cpu" in lines[0]
    seconds = next(ln for ln in lines if ln.startswith("seconds: "))
    assert all(f"{name} " in seconds for name in sections.SECTIONS)
    # The store reads without stepscope: one sweep row, and every trial committed.
    (sweep,) = pq.read_table(next((store / "sweeps").glob("*/*.parquet"))).to_pylist()
    trials = [r for p in (store / "trials").glob("*/*.parquet") for r in pq.read_table(p).to_pylist()]
    assert sweep["trial_count"] == len(trials) and json.loads(sweep["spec"])["device"] == "cpu"


def _trials(store: Path) -> list[dict]:
    return [r for p in sorted((store / "trials").glob("*/*.parquet")) for r in pq.read_table(p).to_pylist()]


def _steps(store: Path, trial_id: str) -> list[dict]:
    return pq.read_table(next((store / "steps").glob(f"*/{trial_id}.parquet"))).to_pylist()


def test_work_moved_to_a_neighbouring_phase_fails_attribution(twin):
    _, store = twin
    sleepers = [t for t in _trials(store) if t["workload"] == sections.SLEEPERS]
    work_keys = {"forward_ms", "loss_ms", "backward_ms", "optimizer_ms", "data_host_ms", "loss_host_ms"}
    base = next(t for t in sleepers if not work_keys & set(json.loads(t["params"])))
    work = next(t for t in sleepers if json.loads(t["params"]).get("backward_ms"))
    device_ms = {k: v * sections.CPU_SCALE for k, v in sections.DEVICE_MS.items()}
    base_steps, work_steps = _steps(store, base["trial_id"]), _steps(store, work["trial_id"])
    rows, _ = sections.attribution_rows(False, base_steps, work_steps, device_ms)
    assert [r.status for r in rows] == ["PASS"] * 6

    # Half of the forward's work booked to the loss instead: both phases fail, no other.
    shift = device_ms["forward"] / 2
    for s in work_steps:
        if s["phase"] == "forward":
            s["duration_ms"] -= shift
        if s["phase"] == "loss":
            s["duration_ms"] += shift
    rows, _ = sections.attribution_rows(False, base_steps, work_steps, device_ms)
    assert [r.check.split(":")[0] for r in rows if r.status == "FAIL"] == ["forward", "loss"]


def test_a_wrong_figure_fails_the_trial_checks(twin):
    _, store = twin
    by_precision = {t["precision"]: t for t in _trials(store) if t["workload"] == "mlp" and t["batch_size"] == 256}
    t = by_precision["bf16"]
    steps = _steps(store, t["trial_id"])
    # The right figures to start from: the real trial's, its wall clock set to what its steps
    # add up to (on a CPU shared with other tests the measured one may be a few % off, which
    # is the twin run's check, not this test's).
    measured = [s for s in steps if not s["is_warmup"]]
    t = {**t, "measured_wall_s": sum(s["duration_ms"] + (s["gpu_gap_ms"] or 0.0) for s in measured) / 1e3}
    _, fails, figures = sections.trial_checks(t, steps, "cpu")
    assert fails == [] and figures["s"] == 2 and figures["state"] == 1  # bf16 weights, SGD's momentum

    cases = {
        "optimizer_state_bytes": (t["optimizer_state_bytes"] + 2, "are not 2N/2N/2N"),
        "param_count": (t["param_count"] + 1, "is not the mlp's"),
        "final_loss": (math.nan, "is not finite"),
        "measured_wall_s": (t["measured_wall_s"] * 1.2, "vs synchronised step"),
        "mfu_measured": (None, "not in (0, inf]"),
    }
    # On a GPU the datasheet's MFU is judged too: missing, it fails; in (0, 1], it passes.
    assert sections.trial_checks({**t, "mfu_datasheet": 0.4, "mfu_measured": 0.5}, steps, "cuda")[1] == []
    assert "not in (0, 1.0]" in sections.trial_checks({**t, "mfu_datasheet": None}, steps, "cuda")[1][0]
    assert "not in (0, 1.0]" in sections.trial_checks({**t, "mfu_datasheet": 0.4, "mfu_measured": 1.2}, steps,
                                                      "cuda")[1][0]
    for column, (value, message) in cases.items():
        _, fails, _ = sections.trial_checks({**t, column: value}, steps, "cpu")
        assert len(fails) >= 1 and message in fails[-1 if column == "mfu_measured" else 0], (column, fails)


def test_the_mlp_parameter_formula_counts_what_torch_builds():
    from stepscope.workloads.builtin.mlp.model import make_model

    for depth, width, input_dim, classes in [(1, 3, 5, 2), (4, 256, 256, 10), (2, 512, 128, 7)]:
        model = make_model(depth, width, input_dim, classes)
        p = {"depth": depth, "width": width, "input_dim": input_dim, "num_classes": classes}
        assert sections.mlp_param_count(p) == sum(q.numel() for q in model.parameters())


def test_a_mapped_libcuda_is_seen_and_fails_the_fork_server_check(tmp_path):
    """A real process that maps a file named like the CUDA driver: /proc shows it, and the
    verdict says the server may hold a context, unless NVML lists its child and not it."""
    lib = tmp_path / "libcuda.so.1"
    lib.write_bytes(b"\0" * 4096)
    code = ("import mmap, sys, time; f = open(sys.argv[1], 'rb'); "
            "m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ); print('ready', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lib)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        seen = probes.inspect_process(proc.pid)
        assert seen["libcuda"] == [str(lib)] and seen["pid"] == proc.pid
        ok, how = probes.server_verdict(seen, child_pid=4242, nvml_pids=None)
        assert not ok and "libcuda.so mapped" in how and "NVML cannot confirm" in how
        ok, how = probes.server_verdict(seen, child_pid=4242, nvml_pids=[4242, proc.pid])
        assert not ok and "NVML lists the server" in how
        ok, how = probes.server_verdict(seen, child_pid=4242, nvml_pids=[4242])
        assert ok and "holds no context" in how
        ok, how = probes.server_verdict({**seen, "uvm": True}, child_pid=4242, nvml_pids=[4242])
        assert not ok and "nvidia-uvm" in how
    finally:
        proc.kill()
        proc.wait()
    # This test process has no CUDA driver loaded (CPU torch or none): a clean verdict.
    ok, how = probes.server_verdict(probes.inspect_process(os.getpid()), None, None)
    assert ok and "never loaded the CUDA driver" in how


def test_a_section_that_raises_or_overruns_is_a_fail_row_and_keeps_its_rows():
    clock = report.Clock()

    def raises(rows):
        rows.append(report.Row("s", "first", "1", status=report.PASS))
        raise ValueError("boom")

    rows, _ = report.run_section("s", raises, 10, clock)
    assert [r.status for r in rows] == ["PASS", "FAIL"]
    assert rows[1].note.startswith("ValueError: boom (at test_gpu_check.py:")

    def hangs(rows):
        rows.append(report.Row("s", "first", "1", status=report.PASS))
        time.sleep(30)

    started = time.perf_counter()
    rows, seconds = report.run_section("s", hangs, 0.3, clock)
    assert time.perf_counter() - started < 5 and seconds < 5
    assert [r.status for r in rows] == ["PASS", "FAIL"] and "time budget" in rows[1].note


def test_loop_verdicts_judge_on_a_gpu_and_only_report_on_a_cpu():
    def statuses(kind, runner, plain, sync, cuda):
        return [v[3] for v in sections.loops_verdicts(kind, {"runner": runner, "plain": plain, "plain_sync": sync}, cuda)]

    assert statuses("compute-bound", 10.2, 10.0, 10.1, True) == ["PASS", "INFO"]
    assert statuses("compute-bound", 10.4, 10.0, 10.1, True) == ["FAIL", "INFO"]  # 1.04 > 1.03
    assert statuses("launch-bound", 2.5, 2.0, 2.5, True) == ["INFO", "PASS"]
    assert statuses("launch-bound", 2.6, 2.0, 2.5, True) == ["INFO", "FAIL"]  # worse than syncing every step
    assert statuses("compute-bound", 20.0, 10.0, 10.0, False) == ["INFO", "INFO"]


def test_only_picks_sections_in_their_order_and_refuses_an_unknown_one(capsys):
    assert gpu_check.parse(["--only", "identity,attribution"]).sections == ["attribution", "identity"]
    with pytest.raises(SystemExit) as exc:
        gpu_check.parse(["--only", "atribution"])
    assert exc.value.code == 2 and "unknown section(s) atribution" in capsys.readouterr().err


def test_the_fork_server_preloads_what_the_scheduler_does():
    from gpucheck.trials import PRELOAD

    from stepscope.orchestrator.scheduler import PRELOAD as SCHEDULER_PRELOAD

    assert PRELOAD == SCHEDULER_PRELOAD


# ---- the GPU-only branches, on rows shaped as a GPU makes them


class GpuTimeline:
    """The runner's clocks on a GPU, event by event: kernels start when both launched and the
    device is free; an event completes when the device reaches it, not before it is recorded;
    a host-to-device copy from pageable memory waits for the stream (torch's memcpy_and_sync).
    Times in ms. Used to make the rows a real GPU would give the sleepers workload."""

    KERNEL_MS, LAUNCH_MS, BOOKKEEPING_MS = 0.01, 0.005, 0.02

    def __init__(self) -> None:
        self.host = self.device = 0.0

    def event(self) -> float:
        self.device = max(self.host, self.device)
        return self.device

    def launch(self, ms: float) -> None:
        self.device = max(self.host, self.device) + ms
        self.host += self.LAUNCH_MS

    def step(self, p: dict) -> tuple[list[float], list[float], list[float], list[float]]:
        starts, ends, host = [], [], []
        for phase in ("data", "to_device", "forward", "loss", "backward", "optimizer"):
            self.host += self.BOOKKEEPING_MS
            host.append(self.host)
            starts.append(self.event())
            if phase != "data":
                self.launch(self.KERNEL_MS)
            self.launch(p.get(f"{phase}_ms", 0.0))
            if phase == "to_device":
                self.host = max(self.host, self.device)
            self.host += p.get(f"{phase}_host_ms", 0.0)
            host.append(self.host)
            ends.append(self.event())
        return starts, ends, host, []


def fake_gpu_trial(trial, sweep_id, store, search_paths=(), sync_each_step=False):
    """What `run_trial` writes for the sleepers workload on a GPU, from `GpuTimeline`;
    `sync_each_step`: as a runner that waited for the device after every step would."""
    from stepscope.storage.schema import TrialStatus
    from stepscope.workloads.measure import rows as rowmod
    from stepscope.workloads.measure.records import DeviceFacts, Measured, NvmlIdentity

    p = trial.params
    m = Measured(facts=DeviceFacts(
        device_kind="cuda", device_uuid="GPU-00000000-0000-0000-0000-000000000001", host="gpu-node", num_threads=16,
        python_version="3.11", torch_version="2.13.0+cu128", device_name="NVIDIA H200", device_index=0,
        identity=NvmlIdentity(device_name="NVIDIA H200", gpu_variant="H200-SXM-141GB", driver_version="570.1",
                              sm_clock_mhz=1980, sm_clock_max_mhz=1980, power_limit_w=700.0, mig_enabled=False)))
    clock, last_end = GpuTimeline(), None
    for step in range(p["warmup"] + p["iterations"]):
        if step == p["warmup"]:
            clock.host = max(clock.host, clock.device)  # the runner's sync before the measured loop
            wall_start = clock.host
        starts, ends, host, _ = clock.step(p)
        m.device_ms.append([e - s for s, e in zip(starts, ends, strict=True)])
        m.gaps_ms.append([None if last_end is None else starts[0] - last_end]
                         + [starts[i] - ends[i - 1] for i in range(1, 6)])
        m.host_ns.append(tuple(int(h * 1e6) for h in host))
        m.phase_memory_peaks.append(((None,) * 6,) * 4)
        last_end = ends[-1]
        if sync_each_step:
            clock.host = max(clock.host, clock.device)
    m.measured_wall_s = (max(clock.host, clock.device) - wall_start) / 1e3
    m.final_loss = 1.0
    row = rowmod.trial_row(trial, sweep_id, m, TrialStatus.OK, None, rowmod.now(), None, 1, pid=12345 + trial.index)
    devices = [rowmod.device_row(m.facts, sweep_id=sweep_id, trial_id=trial.trial_id, node_id=None,
                                 observed_at=rowmod.now())]
    store.write_trial(sweep_id, trial.trial_id, row, rowmod.step_rows(trial, sweep_id, m), devices)
    return row


class FakeGpuChildren:
    """`trials.Children` on a GPU machine: what each child function returns there."""

    def __init__(self, nvml_off_mib: float = 0.0, sync_each_step: bool = False) -> None:
        self.started, self.calls, self.nvml_off = 1, 0, int(nvml_off_mib * 2**20)
        self.sync_each_step = sync_each_step
        self.server_pid = os.getpid()  # a process without libcuda.so, as the server must be

    def call(self, fn, *args, **kwargs):
        from gpucheck import loops

        from stepscope.workloads.measure.runner import run_trial

        self.calls += 1
        if fn is run_trial:
            return fake_gpu_trial(*args, **kwargs, sync_each_step=self.sync_each_step)
        if fn is probes.calibrate:
            return {"device": "cuda", "cycles_per_ms": 1.98e6, "launch_ms": 0.004, "nvml_sm_clock_mhz": 1980}
        if fn is probes.allocation:
            n, base = args[1], 600 * 2**20
            return {"device": "cuda", "used": [base, base + n + self.nvml_off, base], "scope": "process",
                    "reserved": [2 * 2**20, 2 * 2**20 + n, 2 * 2**20], "device_used_v2": [base, base + n, base]}
        if fn is probes.bookkeeping:
            return {"timer_and_peaks_us": 25.0, "timer_us": 6.0, "peaks_us": 19.0}
        if fn is probes.cuda_probe:
            return {"pid": 777, "ppid": self.server_pid, "nvml_pids": [777], "device_sum": float(1 << 20),
                    "parent": probes.inspect_process(self.server_pid)}
        if fn is loops.compare:
            return {"runner": [10.1, 10.2, 10.1], "plain": [10.0, 10.0, 10.1], "plain_sync": [10.3, 10.2, 10.3]}
        raise AssertionError(f"no fake for {fn}")


def gpu_ctx(tmp_path, children) -> sections.Ctx:
    from gpucheck.trials import Trials

    from stepscope.storage.store import Store

    clock = report.Clock()
    trials = Trials(children, Store(str(tmp_path / "store")), "gpu-check-fake", clock.log)
    return sections.Ctx(device="cuda", quick=False, clock=clock, children=children, trials=trials,
                        store_root=tmp_path / "store", run_tests=False)


def test_the_gpu_branches_judge_gpu_shaped_rows(tmp_path, capsys):
    ctx = gpu_ctx(tmp_path, FakeGpuChildren())
    rows: list[report.Row] = []
    for name in ("attribution", "host", "nvml", "bookkeeping", "loops", "forkserver", "identity"):
        sections.SECTIONS[name][0](ctx, rows)
    result = {(r.section, r.check): r.status for r in rows}
    assert [k for k, v in result.items() if v == "FAIL"] == []
    assert [k for k, v in result.items() if v == "SKIP"] == []  # a GPU runs them all
    for phase in ("data", "to_device", "forward", "loss", "backward", "optimizer"):
        assert result[("attribution", f"{phase}: device ms added")] == "PASS"
    for check in ("data: device ms added, GPU idle", "loss: device ms added, GPU idle",
                  "hidden: loss device ms added", "hidden: forward device ms added", "hidden: loss host ms added"):
        assert result[("host", check)] == "PASS", check
    assert [v for k, v in result.items() if k[1].startswith("gpu_gap_ms added")] == ["PASS"]
    assert result[("nvml", "NVML used grows as reserved (process)")] == "PASS"
    assert result[("loops", "compute-bound: runner / plain loop")] == "PASS"
    assert result[("forkserver", "server holds no CUDA context")] == "PASS"
    assert result[("identity", "exact variant")] == "PASS"
    # The hidden data phase: the runner does not sync between steps (the to_device copy does,
    # later), so the data sleep runs behind the previous step's optimizer work: hidden.
    assert result[("host", "hidden: data device ms added")] == "PASS"
    assert "device: device_uuid=GPU-" in capsys.readouterr().out


def test_on_a_gpu_an_nvml_figure_off_by_more_than_4_mib_fails(tmp_path):
    ctx = gpu_ctx(tmp_path, FakeGpuChildren(nvml_off_mib=6))
    rows: list[report.Row] = []
    sections.nvml(ctx, rows)
    assert [(r.check, r.status) for r in rows if r.status == "FAIL"] == [
        ("NVML used grows as reserved (process)", "FAIL"), ("NVML used falls as reserved (process)", "FAIL")]


def test_a_section_the_budget_cannot_hold_is_a_failure_not_a_silent_skip(capsys):
    assert gpu_check.main(["--device", "cpu", "--only", "nvml", "--budget", "2"]) == 1
    out = capsys.readouterr().out
    assert "the check's 2 s were spent before it" in out and out.splitlines()[-1] == "gpu check: 1 failure(s)"


def test_a_runner_that_syncs_every_step_is_caught_by_the_hidden_data_check(tmp_path):
    ctx = gpu_ctx(tmp_path, FakeGpuChildren(sync_each_step=True))
    rows: list[report.Row] = []
    sections.host(ctx, rows)
    failed = {r.check: r.measured for r in rows if r.status == "FAIL"}
    assert list(failed) == ["hidden: data device ms added"] and abs(float(failed[list(failed)[0]]) - 3.0) < 0.1
