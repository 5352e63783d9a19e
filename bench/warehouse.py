"""Does the warehouse stay fast on a big store? Named queries and compare at 1M and 10M step rows.

What it does, per size (`--rows`, default 1M and 10M step rows):

1. Builds a store of that many `steps` rows from REAL trial files. Once per `--work`
   folder it runs 18 real trials with `stepscope trial` (the built-in `mlp`, on this CPU,
   width x batch_size x precision = 3 x 3 x 2, 200 measured + 5 warmup steps: 1230 step
   rows each). Those files, read back with pyarrow, are the templates. The big store is
   made of sweeps of the spec `FAKE_SPEC` (the same grid, `gpus:` four GPU models,
   `repeats: 3`: 216 trials a sweep, one `seed` per sweep), expanded by stepscope's own
   `expand`, so trial ids, config ids, params and the order of trials are the ones a real
   sweep would have; the last sweep stops where the row count is reached (as a sweep
   that was stopped). Each trial copies its template's rows with `duration_ms` scaled by
   its GPU model's speed (`FakeGpu.speed`), one lognormal factor per trial (sigma
   `TRIAL_SIGMA`) and one per row (`ROW_SIGMA`), seeded; the GPU-only columns (gpu_gap_ms,
   peak_allocated_bytes, NVML samples, MFU against the datasheet peak) are filled as a GPU
   trial fills them, and its trials and devices rows name the fake GPU
   (device_name, gpu_model, gpu_variant, device_uuid: 16 devices per model on 2 nodes).
   Files are written where and as `Store.write` writes them (`pq.write_table` defaults:
   snappy, dictionary encoding, one row group), by a process pool. The store is kept in
   `--work` and reused while the parameters that made it are the same.
2. Times, on that store: `open_store` (the listing, which reads every file's footer, then
   the views), every named query with its default parameters and `sweep=all`
   (`--sweep`), and `compare(con, by="device_name")` when `stepscope.analysis.compare`
   is there (and its `timings` dict when the result carries one: the SQL part, 'query' (or
   'sql'), is what the goal is about).
   A query's time is the median of `--runs` runs after one warm run: `run_query`
   executed and every row fetched into Python (`time.perf_counter`); a warm run slower
   than `--slow` seconds is taken as the time itself ("1 run (slow)" in the note).
3. When `stepscope compact` exists: copies the store (`cp -r`, since compaction deletes
   files), times `stepscope compact --store COPY` (a subprocess: its wall time includes
   Python's start, about 1 s), and times the same things on the compacted copy: the
   `after_s` column. The copy is removed afterwards (`--keep` keeps it).

How to read the table: one row per size and thing timed; `before_s` on the store as
built, `after_s` on its compacted copy; `goal` and `ok` for what the issue sets
(every named query < 1 s; compare's query time <= 0.3 s at 10M step rows, on 2 cores):
compare's query time is its timings' 'query' (or 'sql') when the result has it, else its whole time.
`open` is reported apart: it grows with the number of files, which compaction is for.

DuckDB runs with its defaults, as `stepscope.analysis.warehouse` opens it (threads = the
cores, memory_limit = 80% of RAM). `--duckdb KEY=VALUE` (repeatable, e.g. threads=1,
memory_limit=2GB) passes settings to every connection the warehouse opens, to see
whether they matter; the warehouse itself is not changed.

The fake GPUs' names, memory sizes, power limits and SM counts are those of the real
boards (SM counts from `stepscope.workloads.measure.flop_peaks.board_sm_count`, peaks from
`datasheet_peak`, which cite their sources; compute capabilities from
https://developer.nvidia.com/cuda-gpus); their speeds, clocks and the other NVML figures
are made-up stand-ins: nothing here measures a GPU.

Usage:

    python bench/warehouse.py                       # both sizes; first run builds (minutes)
    python bench/warehouse.py --rows 1M --runs 5
    python bench/warehouse.py --rows 10M --duckdb threads=1
    python bench/warehouse.py --store ./stepscope-results --no-compact   # a store of your own
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stepscope.analysis import warehouse
from stepscope.analysis.queries import list_queries, run_query
from stepscope.orchestrator.grid import expand
from stepscope.orchestrator.output import render
from stepscope.orchestrator.spec import parse_spec
from stepscope.storage.schema import (
    PHASES,
    SCHEMA_VERSION,
    STEPS,
    TABLES,
    check_rows,
    version,
)
from stepscope.storage.store import Store
from stepscope.workloads.measure.flop_peaks import board_sm_count, datasheet_peak
from stepscope.workloads.measure.identity import gpu_variant

#: Bump when the way a store is built changes: a cached store of another version is rebuilt.
BUILD_VERSION = 1
DEFAULT_WORK = os.path.join(tempfile.gettempdir(), "stepscope-bench-warehouse")

#: The real trials the big store is made of (`stepscope trial`, on this CPU, one thread).
TEMPLATE_SPEC = """\
name: warehouse-template
fixed:
  workload: mlp
  iterations: {iterations}
  warmup: {warmup}
  device: cpu
  num_threads: 1
  seed: 0
grid:
  width: [64, 128, 256]
  batch_size: [16, 64, 256]
  precision: [fp32, bf16]
"""
#: The spec of every sweep of the big store: the same grid on four GPU models, 3 repeats.
FAKE_SPEC = """\
name: gpu-grid
description: mlp on four GPU models (a store built by bench/warehouse.py)
fixed:
  workload: mlp
  iterations: {iterations}
  warmup: {warmup}
  seed: {seed}
grid:
  width: [64, 128, 256]
  batch_size: [16, 64, 256]
  precision: [fp32, bf16]
gpus: [{gpus}]
repeats: {repeats}
"""
TEMPLATE_KEYS = ("width", "batch_size", "precision")
TRIAL_SIGMA = 0.03  # lognormal sigma of a trial's own speed (repeats differ by about 3%)
ROW_SIGMA = 0.05  # lognormal sigma of each row's duration on top of the template's own noise
NODES_PER_MODEL, GPUS_PER_NODE = 2, 8
MIB = 2**20

COLUMNS = ("size", "what", "before_s", "after_s", "goal", "ok", "note")
QUERY_GOAL_S = 1.0  # every named query (the issue)
COMPARE_GOAL_S = 0.3  # compare --by device_name, its query time, at 10M step rows (the issue)


@dataclass(frozen=True, slots=True)
class FakeGpu:
    """A GPU model the big store pretends to have run on. `speed`: its durations over the
    CPU template's (smaller is faster); clocks in MHz, power in W: stand-ins."""

    name: str  # as NVML reports it
    memory_bytes: int  # as NVML reports it (total)
    power_limit_w: float  # the board's default limit
    compute_capability: str
    speed: float
    sm_clock_max_mhz: int
    mem_clock_max_mhz: int
    host_prefix: str

    @property
    def label(self) -> str:
        return gpu_variant(self.name, self.memory_bytes, self.power_limit_w).label

    @property
    def sm_count(self) -> int:
        entry = board_sm_count(self.label)
        assert entry is not None, self.label
        return entry.sm_count


FAKE_GPUS: tuple[FakeGpu, ...] = (
    FakeGpu("NVIDIA H100 80GB HBM3", 81559 * MIB, 700.0, "9.0", 0.10, 1980, 2619, "h100-sxm"),
    FakeGpu("NVIDIA H100 PCIe", 81559 * MIB, 350.0, "9.0", 0.13, 1755, 1593, "h100-pcie"),
    FakeGpu("NVIDIA A100-SXM4-80GB", 81920 * MIB, 400.0, "8.0", 0.20, 1410, 1593, "a100-sxm"),
    FakeGpu("NVIDIA H200", 143771 * MIB, 700.0, "9.0", 0.085, 1980, 3201, "h200-sxm"),
)


# ---------------------------------------------------------------- sizes and parameters


def parse_rows(text: str) -> list[int]:
    """"1M,10M" -> [1000000, 10000000]; k, M and G suffixes, or plain numbers."""
    sizes = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(part[-1].lower(), 1)
        number = part[:-1] if scale != 1 else part
        try:
            value = int(float(number) * scale)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: not a row count like 1M, 500k or 250000") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{part!r}: must be at least 1 row")
        sizes.append(value)
    if not sizes:
        raise argparse.ArgumentTypeError("give at least one size, e.g. 1M,10M")
    return sizes


def size_label(rows: int) -> str:
    for unit, scale in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if rows >= scale and rows % (scale // 10) == 0:
            return f"{rows / scale:g}{unit}"
    return str(rows)


@dataclass(frozen=True, slots=True)
class BuildParams:
    rows: int
    iterations: int
    warmup: int
    repeats: int
    seed: int

    @property
    def rows_per_trial(self) -> int:
        return (self.iterations + self.warmup) * len(PHASES)

    @property
    def trials(self) -> int:
        return max(1, round(self.rows / self.rows_per_trial))

    def key(self) -> dict:
        return {"build_version": BUILD_VERSION, "rows": self.rows, "iterations": self.iterations,
                "warmup": self.warmup, "repeats": self.repeats, "seed": self.seed,
                "gpus": [g.name for g in FAKE_GPUS], "schema_version": SCHEMA_VERSION}


# ---------------------------------------------------------------- the real trials


def template_store(work: Path, iterations: int, warmup: int) -> Path:
    """The store of the real trials (run once per `work` and step counts); its path."""
    text = TEMPLATE_SPEC.format(iterations=iterations, warmup=warmup)
    folder = work / f"template-{hashlib.sha256(text.encode()).hexdigest()[:10]}"
    store, done = folder / "store", folder / "done.json"
    if done.is_file():
        return store
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    spec = folder / "spec.yaml"
    spec.write_text(text, encoding="utf-8")
    count = len(expand(parse_spec(text)))
    start = time.perf_counter()
    for index in range(count):
        print(f"  real trial {index + 1}/{count} (stepscope trial --index {index})", flush=True)
        done_trial = subprocess.run([sys.executable, "-m", "stepscope", "trial", str(spec), "--index", str(index),
                                     "--store", str(store)], capture_output=True, text=True)
        if done_trial.returncode != 0:
            raise SystemExit(f"stepscope trial --index {index} failed:\n{done_trial.stdout}{done_trial.stderr}")
    done.write_text(json.dumps({"trials": count, "seconds": time.perf_counter() - start}), encoding="utf-8")
    return store


@dataclass(frozen=True, slots=True)
class Template:
    """One real trial's rows: its trials and devices rows, its steps as a table."""

    trial: dict
    device: dict
    steps: pa.Table


def load_templates(store: Path) -> dict[tuple, Template]:
    """The real trials by (width, batch_size, precision)."""
    out = {}
    for path in sorted((store / "trials").glob("sweep_id=*/*.parquet")):
        trial = pq.read_table(path).to_pylist()[0]
        params = json.loads(trial["params"])
        key = tuple(params[k] for k in TEMPLATE_KEYS)
        device = pq.read_table(store / "devices" / path.parent.name / path.name).to_pylist()[0]
        steps = pq.read_table(store / "steps" / path.parent.name / path.name)
        assert steps.schema.equals(STEPS), "a template's steps do not have the store's schema"
        out[key] = Template(trial, device, steps)
    return out


# ---------------------------------------------------------------- building the big store


@dataclass(frozen=True, slots=True)
class TrialTask:
    """What a worker needs to write one trial of the big store."""

    sweep_no: int
    sweep_id: str
    trial_index: int
    trial_id: str
    repeat: int
    gpu: str
    params: dict
    config_id: str
    started_at: dt.datetime


def plan_store(params: BuildParams) -> tuple[list[dict], list[TrialTask]]:
    """The sweeps rows and the trials of the big store, as stepscope's `expand` orders them."""
    sweeps, tasks = [], []
    base = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.timezone.utc)
    gpus = ", ".join(g.label for g in FAKE_GPUS)
    sweep_no = 0
    while len(tasks) < params.trials:
        text = FAKE_SPEC.format(iterations=params.iterations, warmup=params.warmup, seed=sweep_no,
                                gpus=gpus, repeats=params.repeats)
        spec = parse_spec(text, f"gpu-grid-{sweep_no}.yaml")
        created = base + dt.timedelta(hours=20 * sweep_no)
        sweep_id = f"{spec.name}-{created:%Y%m%d-%H%M%S}-{hashlib.sha256(text.encode()).hexdigest()[:4]}"
        trials = expand(spec)
        sweeps.append({
            "sweep_id": sweep_id, "name": spec.name, "spec": spec.text, "spec_hash": spec.spec_hash,
            "spec_path": f"/home/bench/specs/gpu-grid-{sweep_no}.yaml", "created_at": created,
            "trial_count": len(trials), "isolation": spec.isolation.value, "ray_address": "10.0.0.1:6379",
            "host": "head-0", "stepscope_version": version(), "schema_version": SCHEMA_VERSION,
        })
        for t in trials[: params.trials - len(tasks)]:
            tasks.append(TrialTask(sweep_no, sweep_id, t.index, t.trial_id, t.repeat, t.gpu, t.params,
                                   t.config_id, created + dt.timedelta(seconds=8 * t.index)))
        sweep_no += 1
    return sweeps, tasks


_TEMPLATES: dict[tuple, Template] = {}


def _init_worker(store: str) -> None:
    _TEMPLATES.update(load_templates(Path(store)))


def _write_trials(store: str, seed: int, tasks: list[TrialTask]) -> int:
    """Write the steps, devices and trials files of `tasks` (in the writer's order); rows written."""
    rows = 0
    by_label = {g.label: g for g in FAKE_GPUS}
    for task in tasks:
        template = _TEMPLATES[tuple(task.params[k] for k in TEMPLATE_KEYS)]
        gpu = by_label[task.gpu]
        rng = np.random.default_rng([seed, task.sweep_no, task.trial_index])
        steps = _steps(task, template, gpu, rng)
        trial, device = _trial_and_device(task, template, gpu, steps, rng)
        for table, data in (("steps", steps), ("devices", check_rows("devices", [device])),
                            ("trials", check_rows("trials", [trial]))):
            pq.write_table(data, f"{store}/{table}/sweep_id={task.sweep_id}/{task.trial_id}.parquet")
        rows += steps.num_rows
    return rows


def _steps(task: TrialTask, template: Template, gpu: FakeGpu, rng: np.random.Generator) -> pa.Table:
    steps = template.steps
    n = steps.num_rows
    factor = gpu.speed * rng.lognormal(0.0, TRIAL_SIGMA)
    duration = steps["duration_ms"].to_numpy() * factor * rng.lognormal(0.0, ROW_SIGMA, n)
    host = steps["host_ms"].to_numpy() * rng.lognormal(0.0, ROW_SIGMA, n)
    phase = steps["phase_index"].to_numpy()
    t = template.trial
    weights, grads, state = t["param_bytes"], t["grad_bytes"], t["optimizer_state_bytes"]
    batch = task.params["batch_size"] * task.params["input_dim"] * 4
    act = t["activation_bytes"]
    # What a CUDA trial's per-phase allocator peak looks like (grads set to None by zero_grad).
    per_phase = np.array([weights + state, weights + state + batch, weights + state + batch + act,
                          weights + state + batch + act, weights + state + batch + act + grads,
                          weights + state + grads], dtype=np.int64)
    allocated = per_phase[phase]
    reserved = -(-allocated // (2 * MIB)) * (2 * MIB)
    columns = {
        "sweep_id": pa.array([task.sweep_id] * n, pa.string()),
        "trial_id": pa.array([task.trial_id] * n, pa.string()),
        "duration_ms": pa.array(duration, pa.float64()),
        "host_ms": pa.array(host, pa.float64()),
        "gpu_gap_ms": pa.array(rng.exponential(0.004, n), pa.float64()),
        "peak_allocated_bytes": pa.array(allocated, pa.int64()),
        "peak_reserved_bytes": pa.array(reserved, pa.int64()),
        "alloc_retries": pa.array(np.zeros(n, dtype=np.int64), pa.int64()),
    }
    for name, values in columns.items():
        i = STEPS.get_field_index(name)
        steps = steps.set_column(i, STEPS.field(i), values)
    return steps


def _trial_and_device(task: TrialTask, template: Template, gpu: FakeGpu, steps: pa.Table,
                      rng: np.random.Generator) -> tuple[dict, dict]:
    slot = (task.trial_index * 7 + task.sweep_no) % (NODES_PER_MODEL * GPUS_PER_NODE)
    node, index = divmod(slot, GPUS_PER_NODE)
    host = f"{gpu.host_prefix}-{node}"
    node_id = hashlib.sha256(host.encode()).hexdigest()[:56]
    digest = hashlib.sha256(f"{gpu.name}/{slot}".encode()).hexdigest()
    uuid = f"GPU-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"

    measured = ~steps["is_warmup"].to_numpy(zero_copy_only=False)
    step_ms = steps["duration_ms"].to_numpy()[measured].reshape(-1, len(PHASES)).sum(axis=1)
    mean_s = float(step_ms.mean()) / 1000
    wall_s = float(step_ms.sum()) / 1000 * 1.02  # the host's loop around the device's steps
    p = task.params
    t = template.trial
    model_flops = t["flops_forward"] + t["flops_backward"]
    achieved = model_flops / mean_s / 1e12
    hardware = (model_flops + (t["flops_recompute"] or 0)) / mean_s / 1e12
    peak = datasheet_peak(gpu.label, p["precision"])
    peak_tflops = peak.tflops if peak else None
    measured_peak = peak_tflops * 0.85 if peak_tflops else None
    reserved_max = int(steps["peak_reserved_bytes"].to_numpy().max())
    context = 512 * MIB
    started = task.started_at
    trial = {
        **t,
        "sweep_id": task.sweep_id, "trial_id": task.trial_id, "trial_index": task.trial_index,
        "repeat": task.repeat, "attempt": 1, "status": "ok", "error": None, "seed": p["seed"],
        "params": json.dumps(p, sort_keys=True), "config_id": task.config_id, "gpu": task.gpu,
        "gpu_model": gpu.label, "device_kind": "cuda", "device_name": gpu.name, "device_index": index,
        "device_uuid": uuid, "device_memory_bytes": gpu.memory_bytes, "sm_count": gpu.sm_count,
        "compute_capability": gpu.compute_capability, "driver_version": "570.124.06", "cpu_count": 192,
        "num_threads": 24, "host": host, "node_id": node_id, "pid": int(rng.integers(1000, 4_000_000)),
        "torch_version": "2.7.1+cu126", "cuda_version": "12.6", "cudnn_version": "90501",
        "started_at": started, "ended_at": started + dt.timedelta(seconds=wall_s + 2.5),
        "model_to_device_ms": t["model_to_device_ms"] * gpu.speed * 20,
        "measured_wall_s": wall_s, "samples_per_s": p["batch_size"] * int(measured.sum() // len(PHASES)) / wall_s,
        "achieved_tflops": achieved, "achieved_hardware_tflops": hardware, "gpu_variant": gpu.label,
        "peak_tflops_datasheet": peak_tflops, "peak_tflops_measured": measured_peak,
        "mfu_datasheet": achieved / peak_tflops if peak_tflops else None,
        "mfu_measured": achieved / measured_peak if measured_peak else None,
        "hfu_datasheet": hardware / peak_tflops if peak_tflops else None,
        "hfu_measured": hardware / measured_peak if measured_peak else None, "mfu_flag": None,
        "alloc_retries": 0, "cuda_context_bytes": context, "nvml_used_bytes": reserved_max + context,
        "non_torch_bytes": context, "nvml_memory_scope": "process",
        "sm_clock_mhz_min": gpu.sm_clock_max_mhz - int(rng.integers(0, 120)),
        "sm_clock_mhz_p50": float(gpu.sm_clock_max_mhz), "mem_clock_mhz_p50": float(gpu.mem_clock_max_mhz),
        "power_draw_w_p50": gpu.power_limit_w * 0.55 * float(rng.lognormal(0.0, 0.05)),
        "power_draw_w_max": gpu.power_limit_w * 0.8, "temperature_c_max": int(rng.integers(45, 78)),
        "throttle_reasons": "", "nvml_samples": max(1, int(wall_s / 0.05)),
        "stepscope_version": version(), "schema_version": SCHEMA_VERSION,
    }
    device = {
        **template.device,
        "sweep_id": task.sweep_id, "trial_id": task.trial_id, "device_uuid": uuid, "observed_at": started,
        "device_kind": "cuda", "device_name": gpu.name, "gpu_variant": gpu.label,
        "device_memory_bytes": gpu.memory_bytes, "sm_count": gpu.sm_count,
        "compute_capability": gpu.compute_capability, "pci_bus_id": f"00000000:{0x18 + 0x10 * index:02X}:00.0",
        "sm_clock_mhz": 345, "mem_clock_mhz": gpu.mem_clock_max_mhz, "sm_clock_max_mhz": gpu.sm_clock_max_mhz,
        "mem_clock_max_mhz": gpu.mem_clock_max_mhz, "power_limit_w": gpu.power_limit_w,
        "power_limit_default_w": gpu.power_limit_w, "ecc_enabled": True, "mig_enabled": False,
        "driver_version": "570.124.06", "cuda_driver_version": "12.8", "cuda_version": "12.6",
        "cudnn_version": "90501", "torch_version": "2.7.1+cu126", "cpu_model": "AMD EPYC 9654 96-Core Processor",
        "cpu_count": 192, "host_memory_bytes": 2 * 1024**4, "host": host, "node_id": node_id,
        "nvml_unavailable": None,
    }
    return trial, device


def build_store(work: Path, params: BuildParams, templates: Path, workers: int) -> Path:
    """The big store for `params` under `work`, built unless a store with the same
    parameters is there already; its path."""
    store = work / f"store-{size_label(params.rows)}"
    marker = work / f"store-{size_label(params.rows)}.json"
    key = {**params.key(), "templates": str(templates)}
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("key") == key and store.is_dir():
        return store
    marker.unlink(missing_ok=True)
    shutil.rmtree(store, ignore_errors=True)
    sweeps, tasks = plan_store(params)
    print(f"  building {store}: {len(sweeps)} sweeps, {len(tasks)} trials, "
          f"{len(tasks) * params.rows_per_trial:,} step rows ({workers} processes)", flush=True)
    start = time.perf_counter()
    for row in sweeps:
        for table in ("trials", "steps", "devices"):
            (store / table / f"sweep_id={row['sweep_id']}").mkdir(parents=True, exist_ok=True)
        folder = store / "sweeps" / f"sweep_id={row['sweep_id']}"
        folder.mkdir(parents=True)
        pq.write_table(check_rows("sweeps", [row]), folder / "sweep.parquet")
    chunk = 50
    rows = 0
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(str(templates),)) as pool:
        futures = [pool.submit(_write_trials, str(store), params.seed, tasks[i : i + chunk])
                   for i in range(0, len(tasks), chunk)]
        for done, future in enumerate(futures, 1):
            rows += future.result()
            if done % 20 == 0 or done == len(futures):
                print(f"    {done * chunk if done < len(futures) else len(tasks)}/{len(tasks)} trials", flush=True)
    seconds = time.perf_counter() - start
    marker.write_text(json.dumps({"key": key, "rows": rows, "trials": len(tasks), "sweeps": len(sweeps),
                                  "build_s": seconds}), encoding="utf-8")
    print(f"  built in {seconds:.0f} s", flush=True)
    return store


# ---------------------------------------------------------------- timing


@dataclass(frozen=True, slots=True)
class Timed:
    """One thing timed: its seconds (None with an error), and a note (rows, an error)."""

    what: str
    seconds: float | None
    goal: float | None = None
    note: str = ""


def time_call(fn: Callable[[], object], runs: int, slow: float) -> tuple[float, list, str]:
    """The median of `runs` timed calls after one warm call, the timed calls' results and a
    note. A warm call slower than `slow` seconds is the measurement itself (one run): at
    that scale the cache it warms is noise, and repeating it would take minutes."""
    start = time.perf_counter()
    result = fn()
    warm = time.perf_counter() - start
    if warm > slow:
        return warm, [result], "1 run (slow)"
    times, results = [], []
    for _ in range(runs):
        start = time.perf_counter()
        results.append(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), results, ""


def compare_function() -> Callable | None:
    try:
        from stepscope.analysis.compare import compare
    except ImportError:
        return None
    return compare


def time_store(store: Path, args: argparse.Namespace) -> list[Timed]:
    """Open `store` and time the named queries and compare on it."""
    out = []
    start = time.perf_counter()
    for table in TABLES:
        Store(str(store)).table_files(table)
    out.append(Timed("open: listing (footers read)", time.perf_counter() - start))
    start = time.perf_counter()
    opened = warehouse.open_store(str(store))
    out.append(Timed("open: listing + views", time.perf_counter() - start))
    con = opened.con
    for query in list_queries():
        print(f"  query {query.name}", flush=True)
        params = {"sweep": args.sweep} if any(p.name == "sweep" for p in query.parameters) else {}
        try:
            seconds, results, note = time_call(lambda q=query.name, p=params: run_query(con, q, p), args.runs,
                                               args.slow)
            rows = results[-1][1]
            out.append(Timed(f"query {query.name}", seconds, QUERY_GOAL_S, _join(f"{len(rows)} rows", note)))
        except Exception as exc:  # a query that fails at this size (memory) is a finding, not a stop
            out.append(Timed(f"query {query.name}", None, QUERY_GOAL_S, _error(exc)))
    compare = compare_function()
    if compare is None:
        out.append(Timed("compare --by device_name", None, COMPARE_GOAL_S, "not available yet"))
        return out
    print("  compare --by device_name", flush=True)
    try:
        seconds, results, note = time_call(lambda: compare(con, by="device_name", sweep=args.sweep), args.runs,
                                          args.slow)
    except Exception as exc:
        out.append(Timed("compare --by device_name", None, COMPARE_GOAL_S, _error(exc)))
        return out
    # Each part of compare's own timings: its median over the same runs.
    runs = [getattr(r, "timings", None) or {} for r in results]
    timings = {k: statistics.median(t[k] for t in runs) for k in runs[-1] if all(k in t for t in runs)}
    rows = _join(f"{len(results[-1].rows)} rows", note)
    sql_key = next((k for k in ("sql_s", "sql", "query") if k in timings), None)
    if sql_key:
        out.append(Timed("compare --by device_name (total)", seconds, None, rows))
        out.append(Timed(f"compare: {sql_key} (query time)", timings[sql_key], COMPARE_GOAL_S, "its own timings"))
        for name, value in timings.items():
            if name != sql_key:
                out.append(Timed(f"compare: {name}", value, None, "its own timings"))
    else:
        out.append(Timed("compare --by device_name (total)", seconds, COMPARE_GOAL_S, f"{rows}; no timings"))
    return out


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def _error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"error: {type(exc).__name__}: {text[:160]}"


# ---------------------------------------------------------------- compaction


def compact_command() -> list[str] | None:
    """`stepscope compact` as a command, when this stepscope has it."""
    command = [sys.executable, "-m", "stepscope", "compact"]
    probe = subprocess.run([*command, "--help"], capture_output=True, text=True)
    return command if probe.returncode == 0 else None


def compacted_copy(store: Path, command: list[str]) -> tuple[Path, float]:
    """A `cp -r` copy of `store`, compacted; the copy and the compaction's wall seconds."""
    copy = store.with_name(store.name + "-compacted")
    shutil.rmtree(copy, ignore_errors=True)
    subprocess.run(["cp", "-r", str(store), str(copy)], check=True)
    start = time.perf_counter()
    subprocess.run([*command, "--store", str(copy)], check=True, stdout=subprocess.DEVNULL)
    return copy, time.perf_counter() - start


# ---------------------------------------------------------------- facts and the table


def store_facts(store: Path) -> dict:
    files = {table: 0 for table in TABLES}
    size = 0
    for dirpath, _, names in os.walk(store):
        table = Path(dirpath).relative_to(store).parts[:1]
        for name in names:
            size += os.stat(os.path.join(dirpath, name)).st_blocks * 512
            if table and table[0] in files and name.endswith(".parquet"):
                files[table[0]] += 1
    return {"files": files, "bytes": size}


def count_rows(store: Path) -> dict:
    con = warehouse.connect(str(store))
    return {name: con.execute(f"select count(*) from {name}").fetchone()[0]
            for name in ("sweeps", "trials", "steps")}


def fmt_s(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def verdict(value: float | None, goal: float | None) -> str:
    if goal is None or value is None:
        return ""
    return "yes" if value <= goal else "NO"


def table_rows(label: str, before: list[Timed], after: list[Timed] | None, compact_s: float | None) -> list[list]:
    after_by = {t.what: t for t in after or []}
    rows = []
    for t in before:
        a = after_by.get(t.what)
        goal = t.goal
        ok = verdict(t.seconds, goal)
        if a is not None and goal is not None:
            ok = f"{ok or '-'} -> {verdict(a.seconds, goal) or '-'}"
        note = t.note if a is None or a.note == t.note else f"{t.note} | after: {a.note}"
        rows.append([label, t.what, fmt_s(t.seconds), fmt_s(a.seconds) if a else "",
                     f"<= {goal:g} s" if goal else "", ok, note])
    if compact_s is not None:
        rows.append([label, "stepscope compact (wall, subprocess)", "", fmt_s(compact_s), "", "", ""])
    return rows


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: give KEY=VALUE, e.g. threads=1")
    return key.strip(), value.strip()


def with_duckdb_settings(settings: Sequence[tuple[str, str]]) -> None:
    """Every `duckdb.connect` of this process (the warehouse's) with these settings."""
    if not settings:
        return
    real = duckdb.connect

    def connect(database=":memory:", *a, config=None, **kw):
        return real(database, *a, config={**(config or {}), **dict(settings)}, **kw)

    duckdb.connect = connect


def _load() -> str:
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=parse_rows, default=parse_rows("1M,10M"),
                        help="step rows of each store, comma-separated (default 1M,10M)")
    parser.add_argument("--work", type=Path, default=Path(DEFAULT_WORK),
                        help=f"where the stores are built and kept (default {DEFAULT_WORK})")
    parser.add_argument("--runs", type=_positive, default=3, help="timed runs per query after a warm one (default 3)")
    parser.add_argument("--slow", type=float, default=10.0,
                        help="a warm run slower than this many seconds is the measurement, not repeated (default 10)")
    parser.add_argument("--sweep", default="all", help="the queries' and compare's sweep parameter (default all)")
    parser.add_argument("--iterations", type=_positive, default=200, help="measured steps of a trial (default 200)")
    parser.add_argument("--warmup", type=int, default=5, help="warmup steps of a trial (default 5)")
    parser.add_argument("--repeats", type=_positive, default=3, help="trials per configuration and GPU (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the durations' noise (default 0)")
    parser.add_argument("--workers", type=_positive, default=os.cpu_count() or 1,
                        help="processes that write the store (default: the cores)")
    parser.add_argument("--duckdb", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                        help="a DuckDB setting for the warehouse's connections (repeatable), e.g. threads=1")
    parser.add_argument("--store", type=Path, default=None,
                        help="time this store as it is instead of building one (--rows is then ignored)")
    parser.add_argument("--build-only", action="store_true", help="build (or find) the stores, time nothing")
    parser.add_argument("--no-compact", action="store_true", help="time the stores as built only")
    parser.add_argument("--keep", action="store_true", help="keep the compacted copies")
    args = parser.parse_args(argv)
    with_duckdb_settings(args.duckdb)

    args.work.mkdir(parents=True, exist_ok=True)
    total, _, free = shutil.disk_usage(args.work)
    print(f"{args.work}: {free / 2**30:.0f} GiB free of {total / 2**30:.0f} GiB")
    load_before = _load()
    if args.store is not None:
        stores = [(args.store.name, args.store)]
    else:
        print("real trials:", flush=True)
        templates = template_store(args.work, args.iterations, args.warmup)
        stores = []
        for rows in args.rows:
            params = BuildParams(rows, args.iterations, args.warmup, args.repeats, args.seed)
            print(f"{size_label(rows)} step rows:", flush=True)
            stores.append((size_label(rows), build_store(args.work, params, templates, args.workers)))
    if args.build_only:
        return 0
    command = None if args.no_compact else compact_command()
    print(f"stepscope compact: {'available' if command else 'not available (before only)'}")
    print(f"compare: {'available' if compare_function() else 'not available yet'}")

    table, facts = [], []
    for label, store in stores:
        print(f"timing {store}", flush=True)
        counts = count_rows(store)
        before = time_store(store, args)
        facts.append((label, "before", store_facts(store), counts))
        after, compact_s = None, None
        if command:
            copy, compact_s = compacted_copy(store, command)
            after = time_store(copy, args)
            facts.append((label, "after", store_facts(copy), count_rows(copy)))
            if not args.keep:
                shutil.rmtree(copy)
        rows = table_rows(label, before, after, compact_s)
        print(render(COLUMNS, rows, "table"), flush=True)
        table += rows

    print()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    settings = ", ".join(f"{k}={v}" for k, v in args.duckdb) or "defaults"
    with duckdb.connect() as con:
        threads, memory = con.execute("select current_setting('threads'), current_setting('memory_limit')").fetchone()
    print(f"machine: {cores} cores, duckdb {duckdb.__version__} ({settings}; the warehouse's connections: threads={threads}, "
          f"memory_limit={memory}), pyarrow {pa.__version__}, python {sys.version.split()[0]}; "
          f"load average (1 min) {load_before} at the start, {_load()} at the end: above the core count, "
          "something else ran and the times are slower than they would be")
    for label, when, f, counts in facts:
        files = ", ".join(f"{t} {n}" for t, n in f["files"].items())
        print(f"store {label} {when}: {counts['steps']:,} step rows, {counts['trials']:,} trials, "
              f"{counts['sweeps']} sweeps; {sum(f['files'].values()):,} files ({files}); "
              f"{f['bytes'] / MIB:,.0f} MiB on disk")
    print()
    print(render(COLUMNS, table, "table"))
    print(f"\nquery times: median of {args.runs} runs after a warm one, rows fetched; sweep={args.sweep}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
