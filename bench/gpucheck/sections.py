"""The sections of the GPU check, in the order they run. Each appends `Row`s to `rows`.

Every section runs on the CPU twin too (`--device cpu`), with the same code and the
CPU's meaning of each figure (the CPU is the device: device time is host time), except
what needs an asynchronous device, which says SKIP and why.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpucheck import loops, probes
from gpucheck.report import FAIL, INFO, SKIP, Clock, Row, fmt, render, verdict, within
from gpucheck.trials import Children, Ran, Trials, phase_medians, read_table
from stepscope.storage.schema import PHASES

ROOT = Path(__file__).resolve().parents[2]
MiB = 2**20
SLEEPERS = "gpucheck.sleepers:build"
#: Device work per phase for the attribution check, ms on a GPU (times `CPU_SCALE` on a
#: CPU). All different, by at least 2 ms (10 on a CPU), more than the tolerances: work
#: shifted into a neighbour, or two phases swapped, cannot pass.
DEVICE_MS = {"forward": 4.0, "loss": 2.0, "backward": 8.0, "optimizer": 6.0}
#: Host-only work (time.sleep) in the two phases that run user code on the host.
HOST_MS = {"data": 3.0, "loss": 5.0}
#: On a CPU every amount of work is this many times longer: a small shared CPU preempts a
#: thread for a scheduler slice (~3 ms with three runnable threads on two cores), and the
#: work must stay well above that for its place to be told from noise.
CPU_SCALE = 5.0
#: The hidden case: 8 ms of device work in forward and optimizer, 3 ms of host sleep in
#: data and loss; the loss's sleep runs while the forward's 8 ms are still on the GPU.
HIDDEN = {"forward_ms": 8.0, "optimizer_ms": 8.0, "data_host_ms": 3.0, "loss_host_ms": 3.0}
#: Optional `trials` columns that other parts of stepscope add (shown where present).
NVML_STEP_COLUMNS = ("sm_clock_mhz_min", "sm_clock_mhz_p50", "mem_clock_mhz_p50", "power_draw_w_p50",
                     "power_draw_w_max", "temperature_c_max", "throttle_reasons", "nvml_samples")
WORK_COLUMNS = ("flops_recompute", "achieved_hardware_tflops", "hfu_datasheet", "hfu_measured",
                "autocast_weight_bytes")


@dataclass
class Ctx:
    device: str  # "cuda" | "cpu"
    quick: bool
    clock: Clock
    children: Children
    trials: Trials
    store_root: Path
    run_tests: bool = True
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def log(self, message: str) -> None:
        self.clock.log(message)


# ---- tolerances (ms). Each says why in one line.


def device_tolerance(cuda: bool, expected_ms: float) -> float:
    """Device work added to a phase, baseline subtracted.
    CUDA: events resolve ~0.5 us and the baseline's kernels cancel, so what is left is
    launch jitter (tens of us) and the SM clock moving away from the calibration (boost
    clocks drift a few % with power and temperature: the recalibration row shows it).
    CPU: a busy loop is exact on the host clock, but a shared machine can hold a thread
    off the CPU for a scheduler slice (~3 ms) just as its work ends; medians over the
    steps absorb most of that, not all."""
    return 0.15 + 0.05 * expected_ms if cuda else 3.0 + 0.10 * expected_ms


def host_tolerance(cuda: bool, expected_ms: float) -> float:
    """Host sleep added to a phase: time.sleep overshoots by the kernel's timer slack
    (50 us by default on Linux) plus the wake-up latency; a scheduler slice on a loaded CPU."""
    return 0.3 + 0.05 * expected_ms if cuda else 3.0 + 0.10 * expected_ms


def scaled(ctx: Ctx, ms: dict[str, float]) -> dict[str, float]:
    return dict(ms) if ctx.cuda else {k: v * CPU_SCALE for k, v in ms.items()}


def threads(ctx: Ctx) -> int:
    """torch CPU threads of a trial: the worker's own on a GPU (0); one on a CPU, where a
    parallel region waits for its slowest thread and a busy neighbour stalls whole steps
    (the reasoning of bench/overhead.py)."""
    return 0 if ctx.cuda else 1


#: A phase with only host work and its GPU idle: its device time is its host time, give or
#: take an event record and the launch of its few small kernels.
IDLE_MATCH_MS = 0.3
#: Work the device does not see must not move the GPU's idle gaps by more than this.
GAP_MS = 0.3
#: A phase's whole device time, when all it queued ran behind earlier work: its own small
#: kernels only (a 64-wide MSE), tens of us.
HIDDEN_MS = 0.3


# ---- shared pieces


def sleeper_raw(ctx: Ctx, **work: float) -> dict:
    """A trial of the sleepers workload: fp32, SGD, no FLOP count (nothing to count)."""
    iterations, warmup = (10, 3) if ctx.quick else (20, 5)
    return {"workload": SLEEPERS, "batch_size": 8, "precision": "fp32", "optimizer": "sgd",
            "iterations": iterations, "warmup": warmup, "device": ctx.device, "count_flops": False,
            "num_threads": threads(ctx), "cycles_per_ms": calibration(ctx)["cycles_per_ms"], **work}


def calibration(ctx: Ctx) -> dict:
    if "calibration" not in ctx.cache:
        cal = ctx.children.call(probes.calibrate, ctx.device)
        ctx.cache["calibration"] = cal
        ctx.log(f"  calibration: {describe_calibration(cal)}")
    return ctx.cache["calibration"]


def describe_calibration(cal: dict) -> str:
    if cal["device"] != "cuda":
        return f"CPU busy loop of 5 ms overshoots by {cal['spin_error_ms'] * 1e3:.0f} us"
    nvml = f", NVML SM clock {cal['nvml_sm_clock_mhz']} MHz" if cal.get("nvml_sm_clock_mhz") else ""
    return (f"torch.cuda._sleep: {cal['cycles_per_ms']:.0f} cycles/ms (an SM clock of "
            f"{cal['cycles_per_ms'] / 1e3:.0f} MHz{nvml}), launch {cal['launch_ms'] * 1e3:.1f} us")


def baseline(ctx: Ctx) -> Ran:
    if "baseline" not in ctx.cache:
        ctx.cache["baseline"] = ctx.trials.run("baseline (no added work)", sleeper_raw(ctx))
    return ctx.cache["baseline"]


def require_ok(section: str, rows: list[Row], *ran: Ran) -> bool:
    bad = [r for r in ran if not r.ok or not r.steps]
    for r in bad:
        rows.append(Row(section, f"trial {r.label}", r.row.get("status", "?"), "ok", status=FAIL,
                        note=str(r.row.get("error") or "no steps rows")[:300]))
    return not bad


def cell(value: Any) -> str:
    """A table cell: '-' for null, 4 significant digits for a float."""
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def added(work: dict[str, float | None], base: dict[str, float | None], phase: str) -> float | None:
    if work[phase] is None or base[phase] is None:
        return None
    return work[phase] - base[phase]


# ---- tests: the `gpu`-marked tests of the test suite


def gpu_test_files() -> list[str]:
    """The test modules that hold `gpu`-marked tests: only those are collected, since others
    need Ray, DuckDB or moto, which the GPU image lacks."""
    return sorted(str(p) for p in (ROOT / "tests").rglob("test_*.py") if "mark.gpu" in p.read_text(errors="replace"))


def tests(ctx: Ctx, rows: list[Row]) -> None:
    """`pytest -m gpu` over `gpu_test_files()`; without CUDA they are skipped, not failed."""
    if not ctx.run_tests:
        rows.append(Row("tests", "pytest -m gpu", "not run", status=SKIP, note="--no-tests"))
        return
    try:
        import pytest  # noqa: F401
    except ImportError:
        rows.append(Row("tests", "pytest -m gpu", "not run", status=SKIP,
                        note="pytest is not installed here: pip install pytest"))
        return
    files = gpu_test_files()
    ctx.log(f"  pytest -m gpu over {len(files)} modules: {', '.join(Path(f).name for f in files)}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *files],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    summary = [ln for ln in proc.stdout.splitlines() if ln.strip() and ("passed" in ln or "failed" in ln
                                                                         or "skipped" in ln or "error" in ln)]
    line = summary[-1].strip("= ") if summary else (proc.stdout + proc.stderr).strip()[-200:]
    ctx.log(f"  pytest -m gpu: {line} (exit {proc.returncode})")
    # Exit 5: nothing collected, i.e. no test is marked gpu any more: a failure here. On a GPU
    # they must run: all skipped means torch saw no CUDA device. On a CPU, skipped is right.
    ran = " passed" in f" {line}"
    if ctx.cuda or ran or proc.returncode != 0:
        status = verdict(proc.returncode == 0 and ran)
    else:
        status = INFO
    rows.append(Row("tests", "pytest -m gpu", line, "all pass", status=status, note=f"pytest exit {proc.returncode}"))


# ---- attribution: known device work lands in its own phase


def attribution(ctx: Ctx, rows: list[Row]) -> None:
    cal = calibration(ctx)
    measured = (f"{cal['cycles_per_ms']:.0f} cycles/ms" if cal["device"] == "cuda"
                else f"spin +{cal['spin_error_ms'] * 1e3:.0f} us")
    rows.append(Row("attribution", "calibration", measured, status=INFO, note=describe_calibration(cal)))
    base = baseline(ctx)
    device_ms = scaled(ctx, DEVICE_MS)
    work = ctx.trials.run("device work in forward, loss, backward, optimizer",
                          sleeper_raw(ctx, **{f"{p}_ms": ms for p, ms in device_ms.items()}))
    if not require_ok("attribution", rows, base, work):
        return
    got, table = attribution_rows(ctx.cuda, base.steps, work.steps, device_ms)
    print(render(["phase", "base_ms", "work_ms", "added", "expected", "host_added"], table), flush=True)
    rows += got
    if ctx.cuda:
        clock = work.row.get("sm_clock_mhz_p50")  # NVML's samples during the steps, where the runner takes them
        if clock:
            rows.append(Row("attribution", "SM clock during the steps (NVML median)", f"{clock:.0f} MHz",
                            f"{cal['cycles_per_ms'] / 1e3:.0f} MHz", status=INFO,
                            note="_sleep counts SM cycles: the calibration's clock is the one that must hold"))
        again = ctx.children.call(probes.calibrate, ctx.device)
        drift = again["cycles_per_ms"] / cal["cycles_per_ms"] - 1
        rows.append(Row("attribution", "SM clock drift over the section", f"{100 * drift:+.1f}%", "0%", status=INFO,
                        note="beyond ~5%, device work lasts longer or shorter than calibrated"))


def attribution_rows(cuda: bool, base_steps: list[dict], work_steps: list[dict],
                     device_ms: dict[str, float]) -> tuple[list[Row], list[list[str]]]:
    """Per phase: device time added by the work (median over measured steps, baseline
    subtracted) against the work put there, `device_ms[phase]` or 0; and the detail table."""
    b, w = phase_medians(base_steps, "duration_ms"), phase_medians(work_steps, "duration_ms")
    bh, wh = phase_medians(base_steps, "host_ms"), phase_medians(work_steps, "host_ms")
    rows, table = [], []
    for phase in PHASES:
        expected = device_ms.get(phase, 0.0)
        delta, tol = added(w, b, phase), device_tolerance(cuda, expected)
        table.append([phase, fmt(b[phase]), fmt(w[phase]), fmt(delta), fmt(expected), fmt(added(wh, bh, phase))])
        what = "its own work" if expected else "none (a neighbour's work must not leak in)"
        rows.append(Row("attribution", f"{phase}: device ms added", fmt(delta), fmt(expected), f"±{tol:.2f}",
                        verdict(within(delta, expected, tol)), note=what))
    if cuda:
        # The host only queues device work, so its own time grows only where it waits for the
        # GPU: a blocking host-to-device copy synchronises the stream (torch's copy_ calls
        # memcpy_and_sync, aten/src/ATen/native/cuda/Copy.cu), so `to_device` waits for the
        # backlog of the step before. Reported, not judged.
        host_added = {p: added(wh, bh, p) or 0.0 for p in PHASES}
        worst = max(PHASES, key=lambda p: abs(host_added[p]))
        rows.append(Row("attribution", f"host ms added (most: {worst})", fmt(host_added[worst]), status=INFO,
                        note="device work is queued; the host waits only where a phase synchronises"))
    return rows, table


# ---- host: host-only work shows on the host's clock, and where the GPU sees it


def host(ctx: Ctx, rows: list[Row]) -> None:
    base = baseline(ctx)
    host_ms = scaled(ctx, HOST_MS)
    idle = ctx.trials.run("host sleeps in data and loss, GPU idle",
                          sleeper_raw(ctx, data_host_ms=host_ms["data"], loss_host_ms=host_ms["loss"]))
    if not require_ok("host", rows, base, idle):
        return
    b = {c: phase_medians(base.steps, c) for c in ("host_ms", "duration_ms", "gpu_gap_ms")}
    s = {c: phase_medians(idle.steps, c) for c in ("host_ms", "duration_ms", "gpu_gap_ms")}
    ctx.cache["idle_gaps"] = s["gpu_gap_ms"]
    table = [[p, fmt(added(s["host_ms"], b["host_ms"], p)), fmt(added(s["duration_ms"], b["duration_ms"], p)),
              fmt(s["gpu_gap_ms"][p]), fmt(added(s["gpu_gap_ms"], b["gpu_gap_ms"], p))] for p in PHASES]
    print(render(["phase", "host_added", "device_added", "gap_ms", "gap_added"], table), flush=True)
    for phase, ms in host_ms.items():
        delta, tol = added(s["host_ms"], b["host_ms"], phase), host_tolerance(ctx.cuda, ms)
        rows.append(Row("host", f"{phase}: host ms added (time.sleep)", fmt(delta), fmt(ms), f"±{tol:.2f}",
                        verdict(within(delta, ms, tol))))
    others = [p for p in PHASES if p not in HOST_MS]
    host_added = {p: added(s["host_ms"], b["host_ms"], p) for p in others}
    worst = max(others, key=lambda p: math.inf if host_added[p] is None else abs(host_added[p]))
    delta = host_added[worst]
    tol = host_tolerance(ctx.cuda, 0.0)
    rows.append(Row("host", f"other phases: host ms added (worst: {worst})", fmt(delta), fmt(0.0), f"±{tol:.2f}",
                    verdict(within(delta, 0.0, tol))))
    if not ctx.cuda:
        gaps = [st["gpu_gap_ms"] for st in idle.steps]
        rows.append(Row("host", "gpu_gap_ms on a CPU", "null" if all(g is None for g in gaps) else "set", "null",
                        status=verdict(all(g is None for g in gaps)), note="no device clock apart from the host's"))
        rows.append(Row("host", "host work hidden behind device work", "not run", status=SKIP,
                        note="needs an asynchronous device; on a CPU the host's work is the device's"))
        return
    for phase in HOST_MS:
        # The GPU had caught up (the model's kernels take microseconds), so the phase's start
        # and end events complete as the host records them: the device's span is the host's.
        host_delta = added(s["host_ms"], b["host_ms"], phase)
        dev_delta = added(s["duration_ms"], b["duration_ms"], phase)
        rows.append(Row("host", f"{phase}: device ms added, GPU idle", fmt(dev_delta), fmt(host_delta),
                        f"±{IDLE_MATCH_MS:.2f}", verdict(dev_delta is not None and host_delta is not None
                                                         and abs(dev_delta - host_delta) <= IDLE_MATCH_MS),
                        note="an idle GPU's events tick with the host: duration_ms = host_ms (launch bound)"))
    moved = {p: added(s["gpu_gap_ms"], b["gpu_gap_ms"], p) for p in PHASES}
    worst = max(PHASES, key=lambda p: abs(moved[p]) if moved[p] is not None else -1.0)
    rows.append(Row("host", f"gpu_gap_ms added (worst: {worst})", fmt(moved[worst]), fmt(0.0), f"±{GAP_MS:.2f}",
                    verdict(within(moved[worst], 0.0, GAP_MS)),
                    note="a phase's own host work stays inside its events, never in a gap"))
    hidden(ctx, rows, base, b)


def hidden(ctx: Ctx, rows: list[Row], base: Ran, b: dict) -> None:
    run = ctx.trials.run("host sleeps behind device work", sleeper_raw(ctx, **HIDDEN))
    if not require_ok("host", rows, run):
        return
    h = {c: phase_medians(run.steps, c) for c in ("host_ms", "duration_ms")}
    loss_host = added(h["host_ms"], b["host_ms"], "loss")
    loss_dev = added(h["duration_ms"], b["duration_ms"], "loss")
    fwd_dev = added(h["duration_ms"], b["duration_ms"], "forward")
    data_dev = added(h["duration_ms"], b["duration_ms"], "data")
    tol = host_tolerance(ctx.cuda, HIDDEN["loss_host_ms"])
    rows.append(Row("host", "hidden: loss host ms added", fmt(loss_host), fmt(HIDDEN["loss_host_ms"]), f"±{tol:.2f}",
                    verdict(within(loss_host, HIDDEN["loss_host_ms"], tol))))
    rows.append(Row("host", "hidden: loss device ms added", fmt(loss_dev), fmt(0.0), f"±{HIDDEN_MS:.2f}",
                    verdict(within(loss_dev, 0.0, HIDDEN_MS)),
                    note="the loss's host sleep ran while the forward's 8 ms were on the GPU"))
    tol = device_tolerance(ctx.cuda, HIDDEN["forward_ms"])
    rows.append(Row("host", "hidden: forward device ms added", fmt(fwd_dev), fmt(HIDDEN["forward_ms"]), f"±{tol:.2f}",
                    verdict(within(fwd_dev, HIDDEN["forward_ms"], tol))))
    # The runner does not synchronise between steps, so the next step's `data` starts while the
    # previous step's 8 ms of optimizer work still runs, and its 3 ms host sleep is hidden too.
    # A runner that synchronised after every step would find the GPU idle there: ~3 ms.
    rows.append(Row("host", "hidden: data device ms added", fmt(data_dev), fmt(0.0), f"±{HIDDEN_MS:.2f}",
                    verdict(within(data_dev, 0.0, HIDDEN_MS)),
                    note="the host runs ahead: data overlaps the previous step's optimizer work (~3 if it synced)"))


# ---- nvml: NVML's figure moves by a known allocation


def nvml(ctx: Ctx, rows: list[Row]) -> None:
    nbytes = (2 << 30) if ctx.cuda else (256 << 20)  # a multiple of 2 MiB: no allocator rounding
    r = ctx.children.call(probes.allocation, ctx.device, nbytes)
    used = r["used"]
    if any(u is None for u in used):
        rows.append(Row("nvml", "NVML used bytes", "none", "a figure", status=FAIL,
                        note="NVML gave no figure: is nvidia-ml-py installed and the driver reachable?"))
        return
    grew, fell = used[1] - used[0], used[1] - used[2]
    # 4 MiB: two 2 MiB pages of slack, for the driver's own bookkeeping of a new mapping.
    tol = 4 * MiB
    if not ctx.cuda:
        rows.append(Row("nvml", "RSS grows by the tensor (CPU twin)", f"{grew / MiB:.1f} MiB", f"{nbytes / MiB:.0f} MiB",
                        "±4 MiB", verdict(abs(grew - nbytes) <= tol)))
        rows.append(Row("nvml", "RSS falls by it when freed", f"{fell / MiB:.1f} MiB", f"{nbytes / MiB:.0f} MiB",
                        "±4 MiB", verdict(abs(fell - nbytes) <= tol)))
        return
    reserved = r["reserved"]
    r_grew, r_fell = reserved[1] - reserved[0], reserved[1] - reserved[2]
    # The allocator asks the driver for whole blocks: a large one rounded up to 2 MiB (exact
    # here), or, with expandable segments (PYTORCH_CUDA_ALLOC_CONF), in 20 MiB pieces.
    r_tol = 20 * MiB
    rows.append(Row("nvml", "torch reserved grows by the tensor", f"{r_grew / MiB:.1f} MiB", f"{nbytes / MiB:.0f} MiB",
                    f"+{r_tol / MiB:.0f} MiB", verdict(nbytes <= r_grew <= nbytes + r_tol)))
    rows.append(Row("nvml", f"NVML used grows as reserved ({r['scope']})", f"{grew / MiB:.1f} MiB",
                    f"{r_grew / MiB:.1f} MiB", "±4 MiB", verdict(abs(grew - r_grew) <= tol)))
    rows.append(Row("nvml", f"NVML used falls as reserved ({r['scope']})", f"{fell / MiB:.1f} MiB",
                    f"{r_fell / MiB:.1f} MiB", "±4 MiB", verdict(abs(fell - r_grew) <= tol and abs(r_fell - r_grew) <= tol)))
    v2 = r.get("device_used_v2") or []
    if len(v2) == 3 and None not in v2:
        rows.append(Row("nvml", "device used (nvmlMemory_v2) grows", f"{(v2[1] - v2[0]) / MiB:.1f} MiB",
                        f"{r_grew / MiB:.1f} MiB", status=INFO, note="whole device, driver reserve left out"))


# ---- bookkeeping: what the runner's own work costs at a phase boundary


#: Per boundary, host side. 100 us x 7 boundaries = 0.7 ms a step: 7% of a 10 ms step. Beyond
#: it the runner's own work would be a visible share of the small steps it is meant to time.
BOOKKEEPING_US = 100.0


def bookkeeping(ctx: Ctx, rows: list[Row]) -> None:
    steps = 300 if ctx.quick else 2000
    r = ctx.children.call(probes.bookkeeping, ctx.device, steps)
    n = len(PHASES) + 1
    rows.append(Row("bookkeeping", "timer + memory peaks, per boundary", f"{r['timer_and_peaks_us']:.1f} us",
                    f"<= {BOOKKEEPING_US:.0f} us", status=verdict(r["timer_and_peaks_us"] <= BOOKKEEPING_US),
                    note=f"{n} boundaries a step: {n * r['timer_and_peaks_us']:.0f} us a step"))
    rows.append(Row("bookkeeping", "timer alone, per boundary", f"{r['timer_us']:.1f} us", status=INFO))
    rows.append(Row("bookkeeping", "memory peaks alone, per boundary", f"{r['peaks_us']:.1f} us", status=INFO))
    gaps = ctx.cache.get("idle_gaps")
    if ctx.cuda and gaps:
        inner = [gaps[p] for p in PHASES[1:] if gaps[p] is not None]
        if inner:
            rows.append(Row("bookkeeping", "GPU idle per boundary (gpu_gap_ms, idle GPU)",
                            f"{statistics.median(inner) * 1e3:.1f} us", status=INFO,
                            note="the same cost on the device's clock, from the host section's trial"))


# ---- loops: the runner beside plain loops


def loop_models(ctx: Ctx) -> dict[str, dict]:
    """A launch-bound model (many tiny layers: the host's launches are the step) and a
    compute-bound one (big matmuls: the GPU's work is the step)."""
    if ctx.cuda:
        launch = {"depth": 32, "width": 64, "input_dim": 64, "batch_size": 32, "precision": "fp32",
                  "iterations": 200, "warmup": 20}
        compute = {"depth": 4, "width": 6144, "input_dim": 256, "batch_size": 8192, "precision": "bf16",
                   "iterations": 30, "warmup": 5}
    else:
        launch = {"depth": 16, "width": 32, "input_dim": 32, "batch_size": 8, "precision": "fp32",
                  "iterations": 50 if ctx.quick else 200, "warmup": 5}
        compute = {"depth": 2, "width": 512, "input_dim": 256, "batch_size": 256, "precision": "fp32",
                   "iterations": 10 if ctx.quick else 40, "warmup": 2}
    common = {"workload": "mlp", "optimizer": "adam", "device": ctx.device, "count_flops": False,
              "num_threads": threads(ctx)}
    return {"launch-bound": {**common, **launch}, "compute-bound": {**common, **compute}}


#: The issue's goal: the runner's step within 3% of a plain loop's on a compute-bound model.
COMPUTE_GOAL = 1.03
#: Launch bound: the runner may cost its bookkeeping, but must not be slower than a loop that
#: synchronises every step; 2% of slack for run-to-run noise of a host-bound loop.
LAUNCH_SLACK = 1.02


def loops_verdicts(kind: str, ms: dict[str, float], cuda: bool) -> list[tuple[str, str, str, str, str]]:
    """(check, measured, expected, status, note) for one model's medians. On a CPU every
    figure is INFO: a small shared CPU's noise is larger than the goal."""
    to_plain, to_sync = ms["runner"] / ms["plain"], ms["runner"] / ms["plain_sync"]
    out = []
    if kind == "compute-bound":
        status = verdict(to_plain <= COMPUTE_GOAL) if cuda else INFO
        out.append((f"{kind}: runner / plain loop", f"{to_plain:.3f}", f"<= {COMPUTE_GOAL}", status, "goal of the issue"))
        out.append((f"{kind}: runner / plain loop + per-step sync", f"{to_sync:.3f}", "", INFO, ""))
    else:
        out.append((f"{kind}: runner / plain loop", f"{to_plain:.3f}", "", INFO,
                    "the runner's bookkeeping is host time, which is the step here"))
        status = verdict(to_sync <= LAUNCH_SLACK) if cuda else INFO
        out.append((f"{kind}: runner / plain loop + per-step sync", f"{to_sync:.3f}", f"<= {LAUNCH_SLACK}", status,
                    "not worse than a loop that syncs every step"))
    return out


def compare_loops(ctx: Ctx, rows: list[Row]) -> None:
    rounds = 1 if ctx.quick else 3
    table = []
    for kind, raw in loop_models(ctx).items():
        trial = ctx.trials.make(raw)
        result = ctx.children.call(loops.compare, trial, rounds)
        ms = loops.medians(result)
        ctx.log(f"  {kind}: " + ", ".join(f"{side} {v:.3f} ms" for side, v in ms.items()))
        table.append([kind, raw["precision"], str(raw["batch_size"]), fmt(ms["plain"]), fmt(ms["plain_sync"]),
                      fmt(ms["runner"]), f"{ms['runner'] / ms['plain']:.3f}", f"{ms['runner'] / ms['plain_sync']:.3f}"])
        for check, measured, expected, status, note in loops_verdicts(kind, ms, ctx.cuda):
            rows.append(Row("loops", check, measured, expected, status=status, note=note))
    print(render(["model", "precision", "batch", "plain_ms", "plain_sync_ms", "runner_ms", "r/plain", "r/sync"], table),
          flush=True)


# ---- trials of built-in workloads: precisions and the grid


PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "amp_bf16", "amp_fp16")
DTYPE_BYTES = {"bf16": 2, "fp16": 2}  # what the model is cast to; every other precision keeps fp32 weights


def mlp_param_count(p: dict) -> int:
    """The built-in mlp's parameters by hand: Linear(i, o) holds i*o weights and o biases."""
    sizes = [p["input_dim"]] + [p["width"]] * p["depth"] + [p["num_classes"]]
    return sum(i * o + o for i, o in itertools.pairwise(sizes))


def precisions(ctx: Ctx, rows: list[Row]) -> None:
    """Every precision on one small mlp, with SGD (momentum): Adam's eps (1e-8) is zero in
    fp16, so pure-fp16 Adam divides by zero where a gradient underflows (nonfinite)."""
    # On a CPU, steps of several ms: the host's work between steps (no phase's) is then a
    # small share of the step that the phases must add up to.
    size = ({"depth": 2, "width": 512, "input_dim": 512, "batch_size": 256} if ctx.quick
            else {"depth": 4, "width": 4096, "input_dim": 1024, "batch_size": 1024})
    iterations, warmup = (12, 2) if ctx.quick else (20, 5)
    ran = [ctx.trials.run(f"mlp {precision}", {"workload": "mlp", "precision": precision, "optimizer": "sgd",
                                                "iterations": iterations, "warmup": warmup, "device": ctx.device,
                                                "num_threads": threads(ctx), **size})
           for precision in PRECISIONS]
    trial_table(ctx, "precisions", ran, rows)


def grid(ctx: Ctx, rows: list[Row]) -> None:
    """The built-ins in the precisions a sweep most often compares, with Adam: the device's
    phases and gaps must add up to the synchronised step, memory must be exact."""
    if ctx.quick:
        sizes = {"resnet": {"depth": 18, "image_size": 16, "num_classes": 10, "batch_size": 2},
                 "gpt": {"n_layer": 2, "n_head": 2, "d_model": 64, "seq_len": 64, "vocab_size": 256, "batch_size": 4}}
        precision_list, iterations, warmup = ("fp32",), 4, 2
    else:
        sizes = {"resnet": {"depth": 18, "image_size": 128, "num_classes": 100, "batch_size": 64},
                 "gpt": {"n_layer": 6, "n_head": 8, "d_model": 512, "seq_len": 512, "vocab_size": 8192, "batch_size": 8}}
        precision_list, iterations, warmup = ("fp32", "tf32", "amp_bf16"), 30, 5
    ran = [ctx.trials.run(f"{workload} {precision}", {"workload": workload, "precision": precision, "optimizer": "adam",
                                                       "iterations": iterations, "warmup": warmup,
                                                       "device": ctx.device, "num_threads": threads(ctx), **size})
           for workload, size in sizes.items() for precision in precision_list]
    trial_table(ctx, "grid", ran, rows)


#: The device's phases plus its idle gaps against the synchronised host step. On a GPU the
#: two clocks differ by the launch of the first and the sync of the last step only: 5%.
#: On a CPU there are no gaps: the host's own work between two steps (keeping the loss,
#: the loop) is in no phase, and a shared machine's preemptions there with it: 10%.
SUM_TOLERANCE = {"cuda": 0.05, "cpu": 0.10}


def trial_checks(t: dict, steps: list[dict], device: str) -> tuple[list[str], list[str], dict]:
    """For one trial's rows: (what was checked, what failed, figures). Independent
    expectations: bytes from the dtype and the parameter count (by hand for mlp), the
    step from the host's synchronised wall clock."""
    label = f"{t['workload']} {t['precision']}"
    fails: list[str] = []
    if t["status"] != "ok":
        return [label], [f"{label}: {t['status']}: {t['error']}"], {}
    measured = [s for s in steps if not s["is_warmup"]]
    n = t["measured_steps"]
    phases_ms = sum(s["duration_ms"] for s in measured) / n
    gaps = [s["gpu_gap_ms"] for s in measured if s["gpu_gap_ms"] is not None]
    gap_ms = sum(gaps) / n if gaps else None
    host_step_ms = t["measured_wall_s"] * 1e3 / n
    step_err = abs(phases_ms + (gap_ms or 0.0) - host_step_ms) / host_step_ms
    tolerance = SUM_TOLERANCE["cpu" if device == "cpu" else "cuda"]
    if step_err > tolerance:
        fails.append(f"phases + gaps {phases_ms + (gap_ms or 0):.3f} ms vs synchronised step {host_step_ms:.3f} ms "
                     f"({100 * step_err:.1f}% > {100 * tolerance:.0f}%)")
    N = t["param_count"]
    params = json.loads(t["params"])
    if t["workload"] == "mlp" and N != mlp_param_count(params):
        fails.append(f"param_count {N} is not the mlp's {mlp_param_count(params)}")
    s = DTYPE_BYTES.get(t["precision"], 4)
    state = {"sgd": 1, "adam": 2, "adamw": 2}[t["optimizer"]]  # momentum; Adam's two moments
    want = (s * N, s * N, state * s * N)
    got = (t["param_bytes"], t["grad_bytes"], t["optimizer_state_bytes"])
    memory_ok = got == want
    if not memory_ok:
        fails.append(f"param/grad/state bytes {got[0]}/{got[1]}/{got[2]} are not {s}N/{s}N/{state * s}N for N={N}")
    loss_ok = t["final_loss"] is not None and math.isfinite(t["final_loss"])
    if not loss_ok:
        fails.append(f"final loss {t['final_loss']} is not finite")
    mfus = {"measured": t["mfu_measured"]}
    if device != "cpu":
        mfus["datasheet"] = t["mfu_datasheet"]
    # On a CPU only a figure is required, not <= 1: the "measured peak" there is a short
    # best-of-3 matmul on a shared machine, and in fp16 torch's CPU matmul at the peak's size
    # takes a slow path that a model's small matmuls do not; a model can beat either.
    mfu_judged = device != "cpu"
    top = 1.0 if mfu_judged else math.inf
    if not all(m is not None and 0 < m <= top for m in mfus.values()):
        fails.append(f"MFU {mfus} not in (0, {top}] ({t['flops_error'] or 'no FLOPs error'})")
    peak_alloc = max((st["peak_allocated_bytes"] or 0) for st in measured) or None
    figures = {"N": N, "host_step_ms": host_step_ms, "phases_ms": phases_ms, "gap_ms": gap_ms, "step_err": step_err,
               "memory_ok": memory_ok, "s": s, "state": state, "peak_alloc": peak_alloc, "mfus": mfus,
               "mfu_judged": mfu_judged}
    return [label], fails, figures


TRIAL_HEADER = ["workload", "precision", "batch", "params", "sync_step_ms", "phases_ms", "gaps_ms", "diff",
                "param/grad/state", "act_MiB", "peak_alloc_MiB", "non_torch_MiB", "TFLOP/s", "mfu_sheet", "mfu_meas",
                "loss", "check"]


def trial_table(ctx: Ctx, section: str, ran: list[Ran], rows: list[Row]) -> None:
    table, extra = [], []
    for r in ran:
        t = r.row
        (label,), fails, f = trial_checks(t, r.steps, ctx.device)
        if not f:
            rows.append(Row(section, label, t["status"], "ok", status=FAIL, note=str(t.get("error"))[:300]))
            continue
        table.append([t["workload"], t["precision"], t["batch_size"], f"{f['N'] / 1e6:.2f}M", fmt(f["host_step_ms"]),
                      fmt(f["phases_ms"]), fmt(f["gap_ms"]), f"{100 * f['step_err']:.2f}%",
                      f"{f['s']}N/{f['s']}N/{f['state'] * f['s']}N" if f["memory_ok"] else "WRONG",
                      fmt(t["activation_bytes"] / MiB, 1) if t["activation_bytes"] is not None else "-",
                      f"{f['peak_alloc'] / MiB:.0f}" if f["peak_alloc"] else "-",
                      "-" if t["non_torch_bytes"] is None else f"{t['non_torch_bytes'] / MiB:.0f}",
                      fmt(t["achieved_tflops"], 2), fmt(t["mfu_datasheet"]), fmt(t["mfu_measured"]),
                      fmt(t["final_loss"], 4), "ok" if not fails else "FAIL"])
        present = [c for c in WORK_COLUMNS if c in t]
        if present:
            extra.append([label] + [cell(t[c]) for c in present])
        measured = (f"step {100 * f['step_err']:.1f}% off; bytes {'exact' if f['memory_ok'] else 'WRONG'}; "
                    f"MFU {'/'.join(fmt(m) for m in f['mfus'].values())}; loss {fmt(t['final_loss'], 3)}")
        note = "; ".join(fails) if fails else ("" if f["mfu_judged"] else "MFU <= 1 not judged on a CPU")
        expected = "<=5%; exact; (0,1]; finite" if ctx.cuda else "<=10%; exact; >0; finite"
        rows.append(Row(section, label, measured, expected, status=verdict(not fails), note=note))
    print(render(TRIAL_HEADER, table), flush=True)
    if extra:
        present = [c for c in WORK_COLUMNS if c in ran[0].row]
        print(render(["trial", *present], extra), flush=True)


# ---- forkserver: the server never initialised CUDA; its children used the device


def forkserver(ctx: Ctx, rows: list[Row]) -> None:
    probe = ctx.children.call(probes.cuda_probe, ctx.device)
    server_pid = ctx.children.server_pid
    seen = probes.inspect_process(server_pid)
    if probe["ppid"] != server_pid:
        rows.append(Row("forkserver", "probe's parent is the server", str(probe["ppid"]), str(server_pid), status=FAIL))
        return
    ok, how = probes.server_verdict(seen, probe["pid"], probe["nvml_pids"])
    # The same look from inside the child, at its parent: it must agree.
    agree = bool(probe["parent"]["libcuda"]) == bool(seen["libcuda"])
    rows.append(Row("forkserver", "server holds no CUDA context", "none" if ok else "one?", "none",
                    status=verdict(ok and agree), note=how if agree else f"{how}; the child saw {probe['parent']}"))
    used = [r for r in ctx.trials.ran if r.row.get("device_kind") == ctx.device]
    kinds = sorted({str(r.row.get("device_kind")) for r in ctx.trials.ran})
    # The probe itself used the device (a 1 Mi-element tensor of ones, summed on it).
    probe_used = not ctx.cuda or probe.get("device_sum") == float(1 << 20)
    used_ok = probe_used and len(used) == len(ctx.trials.ran)
    pids = {r.row.get("pid") for r in ctx.trials.ran}
    rows.append(Row("forkserver", f"children used the {ctx.device}",
                    f"{len(used)}/{len(ctx.trials.ran)} trials, {ctx.children.calls} children",
                    f"all on {ctx.device}", status=verdict(used_ok and None not in pids and os.getpid() not in pids),
                    note=f"device kinds {kinds}; servers started {ctx.children.started}; "
                         f"{len(pids)} distinct trial pids, none this process's"))
    if ctx.cuda:
        listed = bool(probe["nvml_pids"]) and probe["pid"] in probe["nvml_pids"]
        rows.append(Row("forkserver", "NVML lists the CUDA child", "yes" if listed else "no", status=INFO,
                        note="" if listed else "NVML sees another pid namespace (a container); the maps test holds"))


# ---- identity: the device row it read


def identity(ctx: Ctx, rows: list[Row]) -> None:
    devices = read_table(ctx.store_root, "devices", ctx.trials.sweep_id)
    if not devices:
        ctx.trials.run("identity: one small trial", {"workload": "mlp", "depth": 1, "width": 16, "input_dim": 16,
                                                     "batch_size": 4, "iterations": 2, "warmup": 1,
                                                     "device": ctx.device, "count_flops": False,
                                                     "num_threads": threads(ctx)})
        devices = read_table(ctx.store_root, "devices", ctx.trials.sweep_id)
    by_uuid = {d["device_uuid"]: d for d in devices}
    keys = ("device_uuid", "device_name", "gpu_variant", "device_memory_bytes", "sm_count", "compute_capability",
            "pci_bus_id", "sm_clock_mhz", "mem_clock_mhz", "sm_clock_max_mhz", "mem_clock_max_mhz", "power_limit_w",
            "ecc_enabled", "mig_enabled", "driver_version", "cuda_driver_version", "cuda_version", "cudnn_version",
            "torch_version", "cpu_model", "cpu_count", "host_memory_bytes", "host", "nvml_unavailable")
    for d in by_uuid.values():
        print("device: " + ", ".join(f"{k}={d.get(k)}" for k in keys), flush=True)
    rows.append(Row("identity", "one device across the trials", str(len(by_uuid)), "1", status=verdict(len(by_uuid) == 1),
                    note=", ".join(sorted(by_uuid))[:200]))
    if len(by_uuid) != 1:
        return
    d = next(iter(by_uuid.values()))
    if ctx.cuda:
        rows.append(Row("identity", "NVML UUID", d["device_uuid"], "GPU-... or MIG-...",
                        status=verdict(d["device_uuid"].startswith(("GPU-", "MIG-")))))
        rows.append(Row("identity", "exact variant", str(d["gpu_variant"]), "a datasheet row",
                        status=verdict(d["gpu_variant"] is not None), note=str(d["device_name"])))
        rows.append(Row("identity", "driver, clocks, power, MIG",
                        f"driver {d['driver_version']}, SM {d['sm_clock_mhz']}/{d['sm_clock_max_mhz']} MHz, "
                        f"{d['power_limit_w']} W, MIG {d['mig_enabled']}", status=INFO,
                        note=f"NVML could not give: {d['nvml_unavailable']}" if d["nvml_unavailable"] else ""))
    else:
        rows.append(Row("identity", "CPU key", d["device_uuid"], "CPU-<host>",
                        status=verdict(d["device_uuid"].startswith("CPU-")), note=str(d["cpu_model"])))
    trials = read_table(ctx.store_root, "trials", ctx.trials.sweep_id)
    present = [c for c in NVML_STEP_COLUMNS if trials and c in trials[0]]
    if present:
        table = [[f"{t['workload']} {t['precision']}"] + [cell(t[c]) for c in present] for t in trials]
        print(render(["trial", *present], table), flush=True)
        sampled = sum(1 for t in trials if t.get("nvml_samples"))
        rows.append(Row("identity", "NVML samples during the steps", f"{sampled}/{len(trials)} trials", status=INFO,
                        note=", ".join(present)))
    else:
        rows.append(Row("identity", "NVML samples during the steps", "no such columns", status=INFO,
                        note="trials has none of " + ", ".join(NVML_STEP_COLUMNS[:3]) + ", ..."))


#: name -> (function, budget in seconds on a GPU, what it shows). The budgets add up to
#: more than the whole check's; each is a cap for a section that hangs, not a forecast.
SECTIONS: dict[str, tuple[Callable[[Ctx, list[Row]], None], float, str]] = {
    "tests": (tests, 150, "pytest -m gpu"),
    "attribution": (attribution, 60, "known device work lands in its own phase"),
    "host": (host, 60, "host-only work: host_ms, and what the GPU's clock sees"),
    "nvml": (nvml, 45, "NVML's used bytes move by a known allocation"),
    "bookkeeping": (bookkeeping, 45, "the runner's per-boundary cost"),
    "loops": (compare_loops, 120, "the runner against plain loops"),
    "precisions": (precisions, 120, "every precision: ok, finite, exact bytes, MFU"),
    "grid": (grid, 150, "resnet and gpt: phases + gaps = step, exact bytes, MFU"),
    "forkserver": (forkserver, 45, "the fork server never initialised CUDA"),
    "identity": (identity, 45, "the device row it read"),
}
