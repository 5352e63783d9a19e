"""The Parquet schema of a stepscope store: one module owns it.

Table names, columns, types and the schema version live here and nowhere else.
The writer (`stepscope.storage.store`) and the DuckDB views (`stepscope.analysis.warehouse`
types every column from its Arrow type here; `queries/views.sql` names none it passes through)
both read it, so a new column is its field here plus its value (a field of the record that
measures it, `stepscope.workloads.measure.records`). tests/storage/test_columns.py fails,
naming the column, where the typed records, the rows or the views differ from it. Torch-free
and Ray-free.

Layout of a store (hive-style partitions by table and sweep)::

    STORE/sweeps/sweep_id=<id>/sweep.parquet
    STORE/trials/sweep_id=<id>/<trial_id>.parquet
    STORE/steps/sweep_id=<id>/<trial_id>.parquet
    STORE/devices/sweep_id=<id>/<trial_id>.parquet

Every file also carries `sweep_id` as a column, so a single file read on its
own is complete. A trial's `trials` file is written last and is the commit
record: a `steps` or `devices` file without its `trials` row is an interrupted
write and the views ignore it.
"""

from __future__ import annotations

import enum

import pyarrow as pa

#: 2: activation_bytes leaves out module buffers and autocast's weight copies (now
#: autocast_weight_bytes) and is counted on step 0 whatever warmup is; flops_backward leaves
#: out what activation checkpointing recomputes (now flops_recompute). Files of version 1
#: read as they are, with the columns added since null.
SCHEMA_VERSION = 2


def version() -> str:
    """The installed stepscope's version, as the `stepscope_version` columns record it."""
    try:
        from importlib.metadata import version as _v

        return _v("stepscope")
    except Exception:  # not installed (a bare checkout on sys.path)
        return "0+unknown"

#: The phases of every step, in order (docs/measurement.md, "The six phases"). zero_grad belongs to `optimizer`.
PHASES: tuple[str, ...] = ("data", "to_device", "forward", "loss", "backward", "optimizer")

class TrialStatus(str, enum.Enum):
    """How a trial ended: the `trials.status` column. `ok` and `oom` are results (the
    sweep's exit code is 0); `failed`, `timeout` and `nonfinite` are not (exit code 1).
    A str: compares and hashes as its value (`TrialStatus.OK == "ok"`)."""

    OK = "ok"
    OOM = "oom"  # the device (or host) ran out of memory: a result, the configuration does not fit
    FAILED = "failed"
    TIMEOUT = "timeout"
    # Every step ran and is stored, but a step's loss was NaN or ±Inf (`trials.nonfinite_step`):
    # timings of a diverged run are no result (NaN arithmetic, skipped updates).
    NONFINITE = "nonfinite"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def is_result(self) -> bool:
        return self.value in RESULT_STATUSES


STATUSES: tuple[str, ...] = tuple(s.value for s in TrialStatus)
RESULT_STATUSES: frozenset[str] = frozenset({"ok", "oom"})

_TS = pa.timestamp("us", tz="UTC")

SWEEPS = pa.schema(
    [
        pa.field("sweep_id", pa.string(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("spec", pa.string(), nullable=False),  # the YAML text as written
        pa.field("spec_hash", pa.string(), nullable=False),  # sha256 of the normalised spec
        pa.field("spec_path", pa.string()),
        pa.field("created_at", _TS, nullable=False),
        pa.field("trial_count", pa.int32(), nullable=False),
        pa.field("isolation", pa.string(), nullable=False),
        pa.field("ray_address", pa.string()),  # null for an embedded local cluster
        pa.field("host", pa.string()),  # where the driver ran
        pa.field("stepscope_version", pa.string(), nullable=False),
        pa.field("schema_version", pa.int32(), nullable=False),
    ]
)

TRIALS = pa.schema(
    [
        pa.field("sweep_id", pa.string(), nullable=False),
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("trial_index", pa.int32(), nullable=False),
        pa.field("repeat", pa.int32(), nullable=False),
        pa.field("attempt", pa.int32(), nullable=False),  # 1 + retries the scheduler made
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("workload", pa.string(), nullable=False),
        pa.field("batch_size", pa.int64(), nullable=False),
        pa.field("precision", pa.string(), nullable=False),
        pa.field("optimizer", pa.string(), nullable=False),
        pa.field("iterations", pa.int32(), nullable=False),
        pa.field("warmup", pa.int32(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("params", pa.string(), nullable=False),  # JSON of every resolved parameter
        pa.field("config_id", pa.string(), nullable=False),  # hash of params but the seed: repeats share it
        pa.field("gpu", pa.string()),  # requested accelerator type, null for `any`
        # The GPU model of the node the trial ran on, whatever the spec asked for: the node's
        # `gpu_model:` label, else its Ray accelerator type; null outside Ray or on a CPU node.
        pa.field("gpu_model", pa.string()),
        pa.field("device_kind", pa.string()),  # cuda | cpu (null if the trial died first)
        pa.field("device_name", pa.string()),
        pa.field("device_index", pa.int32()),
        pa.field("device_uuid", pa.string()),
        pa.field("device_memory_bytes", pa.int64()),
        pa.field("sm_count", pa.int32()),
        pa.field("compute_capability", pa.string()),
        pa.field("driver_version", pa.string()),
        pa.field("cpu_count", pa.int32()),
        pa.field("num_threads", pa.int32()),  # torch intra-op threads
        pa.field("host", pa.string()),
        pa.field("node_id", pa.string()),  # Ray node, null outside Ray
        pa.field("pid", pa.int64()),
        pa.field("python_version", pa.string()),
        pa.field("torch_version", pa.string()),
        pa.field("cuda_version", pa.string()),
        pa.field("cudnn_version", pa.string()),
        pa.field("started_at", _TS),
        pa.field("ended_at", _TS),
        pa.field("model_to_device_ms", pa.float64()),
        pa.field("param_count", pa.int64()),
        pa.field("measured_steps", pa.int32()),  # measured steps that completed
        pa.field("measured_wall_s", pa.float64()),  # host wall time of the measured loop
        pa.field("samples_per_s", pa.float64()),
        pa.field("final_loss", pa.float64()),
        # First iteration (as steps.iteration, warmup included) whose loss was NaN or ±Inf; null if none was.
        pa.field("nonfinite_step", pa.int32()),
        # A custom workload's own spec keys that it never read (a typo?), comma-separated; null if none.
        pa.field("unused_params", pa.string()),
        # Work and utilisation, counted in a separate untimed pass (stepscope.workloads.measure.flops).
        # Model FLOPs = forward + backward (MFU), hardware FLOPs = model + recompute (HFU): PaLM appendix B.
        pa.field("flops_forward", pa.int64()),  # forward + loss, one step, whole batch
        pa.field("flops_backward", pa.int64()),  # backward proper, without recomputation
        pa.field("flops_recompute", pa.int64()),  # forward re-run in backward (activation checkpointing)
        pa.field("flops_analytic", pa.int64()),  # gpt: (6N + 12·L·d·T) per token
        pa.field("flops_uncounted", pa.string()),  # operators the counter had no formula for
        pa.field("flops_error", pa.string()),  # why nothing was counted, when nothing was
        pa.field("flops_device", pa.string()),  # meta, or cpu where the step could not run on meta
        pa.field("achieved_tflops", pa.float64()),  # model FLOPs / mean measured step
        pa.field("achieved_hardware_tflops", pa.float64()),  # hardware FLOPs / mean measured step
        pa.field("gpu_variant", pa.string()),  # exact board, e.g. H100-SXM-80GB (stepscope.workloads.measure.identity)
        pa.field("peak_tflops_datasheet", pa.float64()),  # dense, for gpu_variant and precision
        pa.field("peak_tflops_measured", pa.float64()),  # matmul peak measured on this node
        pa.field("mfu_datasheet", pa.float64()),  # achieved_tflops / peak_tflops_datasheet
        pa.field("mfu_measured", pa.float64()),  # achieved_tflops / peak_tflops_measured
        pa.field("hfu_datasheet", pa.float64()),  # achieved_hardware_tflops / peak_tflops_datasheet
        pa.field("hfu_measured", pa.float64()),  # achieved_hardware_tflops / peak_tflops_measured
        # Why a share may read above 1, or that the cached measured peak was too low and was measured again
        # (stepscope.workloads.measure.flop_peaks.FLAGS): above_datasheet_peak, above_measured_peak,
        # within_peak_tolerance, measured_peak_remeasured; null when none applies.
        pa.field("mfu_flag", pa.string()),
        # Memory, measured from the tensors (stepscope.workloads.measure.memory).
        pa.field("param_bytes", pa.int64()),
        pa.field("grad_bytes", pa.int64()),
        pa.field("optimizer_state_bytes", pa.int64()),  # per-parameter state; scalar counters aside
        pa.field("activation_bytes", pa.int64()),  # saved for backward, step 0; parameters, buffers, autocast weight copies aside
        pa.field("autocast_weight_bytes", pa.int64()),  # low-precision weight copies autocast saved for backward, step 0
        pa.field("alloc_retries", pa.int64()),  # CUDA caching allocator retries over the trial
        # GPU memory that torch's allocator does not see, from NVML (null on a CPU or without NVML).
        pa.field("cuda_context_bytes", pa.int64()),  # right after the CUDA context was created
        pa.field("nvml_used_bytes", pa.int64()),  # after the measured steps
        pa.field("non_torch_bytes", pa.int64()),  # nvml_used_bytes - torch's reserved, same moment
        pa.field("nvml_memory_scope", pa.string()),  # 'process' (this pid) or 'device' (whole GPU)
        # The GPU while the measured steps ran, sampled from NVML (stepscope.workloads.measure.sampler);
        # null on a CPU or without NVML. Clocks at the trial's start are in `devices`: idle clocks.
        pa.field("sm_clock_mhz_min", pa.int32()),  # lowest SM clock seen: a throttled trial shows here
        pa.field("sm_clock_mhz_p50", pa.float64()),  # median SM clock
        pa.field("mem_clock_mhz_p50", pa.float64()),  # median memory clock
        pa.field("power_draw_w_p50", pa.float64()),  # median board power draw, watts
        pa.field("power_draw_w_max", pa.float64()),
        pa.field("temperature_c_max", pa.int32()),  # highest GPU temperature, Celsius
        pa.field("throttle_reasons", pa.string()),  # clock event reasons seen, comma-separated, idle aside; '' for none
        pa.field("nvml_samples", pa.int32()),  # how many samples the figures above are made of
        pa.field("stepscope_version", pa.string(), nullable=False),
        pa.field("schema_version", pa.int32(), nullable=False),
    ]
)

STEPS = pa.schema(
    [
        pa.field("sweep_id", pa.string(), nullable=False),
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("iteration", pa.int32(), nullable=False),  # 0-based, warmup steps first
        pa.field("is_warmup", pa.bool_(), nullable=False),
        pa.field("phase", pa.string(), nullable=False),
        pa.field("phase_index", pa.int8(), nullable=False),  # position in PHASES
        pa.field("duration_ms", pa.float64(), nullable=False),  # device time on a GPU, wall on a CPU
        pa.field("host_ms", pa.float64(), nullable=False),  # wall time seen by the host
        pa.field("gpu_gap_ms", pa.float64()),  # GPU idle before the phase (CUDA events); null on a CPU
        pa.field("peak_rss_bytes", pa.int64()),  # process peak resident memory in the phase (Linux)
        pa.field("peak_allocated_bytes", pa.int64()),  # CUDA allocator peak in the phase; null on a CPU
        pa.field("peak_reserved_bytes", pa.int64()),
        pa.field("alloc_retries", pa.int64()),  # CUDA caching allocator retries in the phase; null on a CPU
    ]
)

#: One row per device a trial ran on (views.sql's `devices` keeps the latest per device_uuid).
DEVICES = pa.schema(
    [
        pa.field("sweep_id", pa.string(), nullable=False),
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("device_uuid", pa.string(), nullable=False),  # NVML's GPU-/MIG- UUID; CPU-<host> on a CPU
        pa.field("observed_at", _TS, nullable=False),
        pa.field("device_kind", pa.string(), nullable=False),  # cuda | cpu
        pa.field("device_name", pa.string()),  # NVML's name on a GPU, the CPU model on a CPU
        pa.field("gpu_variant", pa.string()),  # e.g. H100-SXM-80GB (stepscope.workloads.measure.identity)
        pa.field("device_memory_bytes", pa.int64()),
        pa.field("sm_count", pa.int32()),
        pa.field("compute_capability", pa.string()),
        pa.field("pci_bus_id", pa.string()),
        pa.field("sm_clock_mhz", pa.int32()),  # at the trial's start
        pa.field("mem_clock_mhz", pa.int32()),
        pa.field("sm_clock_max_mhz", pa.int32()),
        pa.field("mem_clock_max_mhz", pa.int32()),
        pa.field("power_limit_w", pa.float64()),
        pa.field("power_limit_default_w", pa.float64()),  # the board's default limit: what decides gpu_variant
        pa.field("ecc_enabled", pa.bool_()),
        pa.field("mig_enabled", pa.bool_()),
        pa.field("driver_version", pa.string()),
        pa.field("cuda_driver_version", pa.string()),  # what the driver supports
        pa.field("cuda_version", pa.string()),  # the CUDA runtime torch was built with
        pa.field("cudnn_version", pa.string()),
        pa.field("torch_version", pa.string()),
        pa.field("cpu_model", pa.string()),  # the host's CPU, on every device kind
        pa.field("cpu_count", pa.int32()),
        pa.field("host_memory_bytes", pa.int64()),
        pa.field("host", pa.string()),
        pa.field("node_id", pa.string()),  # Ray node, null outside Ray
        pa.field("nvml_unavailable", pa.string()),  # JSON {field: NVML's reason} for fields NVML could not give
    ]
)

#: Per-trial statistics of the measured steps, one row per trial and metric: a derived table,
#: written only by `stepscope compact` (from the steps it compacts) so that comparisons and
#: named queries read a few rows per trial instead of every step. A trial without a row here
#: (one written since the last compaction) is summarised from its steps when read, by the same
#: SQL (queries/intermediate.sql, `computed_summaries`): the two never differ.
SUMMARIES = pa.schema(
    [
        pa.field("sweep_id", pa.string(), nullable=False),
        pa.field("trial_id", pa.string(), nullable=False),
        # 'step' (a whole measured step's total), a phase of PHASES, 'compute' (forward + loss +
        # backward) or 'forward_loss' (forward + loss): per step, summed over those phases
        pa.field("metric", pa.string(), nullable=False),
        pa.field("steps", pa.int32(), nullable=False),  # whole measured steps counted
        pa.field("p50", pa.float64()),  # duration_ms median (quantile_cont), ms
        pa.field("p10", pa.float64()),
        pa.field("p90", pa.float64()),
        pa.field("mean", pa.float64()),
        pa.field("stddev", pa.float64()),  # sample standard deviation; null with one step
        pa.field("min", pa.float64()),
        pa.field("max", pa.float64()),
        pa.field("outliers", pa.int32()),  # steps beyond 3 scaled MADs of the median (whole_steps' rule)
        # medians of consecutive blocks of ceil(n^(1/3)) steps, in iteration order (the block bootstrap's units)
        pa.field("block_p50", pa.list_(pa.float64())),
        # every whole measured step's duration_ms, in iteration order: for metric 'step' only
        # (null for the others), so per-configuration quantiles pool the steps of its trials
        pa.field("durations_ms", pa.list_(pa.float64())),
        pa.field("host_p50", pa.float64()),  # host_ms median, ms
        pa.field("gpu_gap_p50", pa.float64()),  # gpu_gap_ms median, ms; null on a CPU
        pa.field("peak_allocated_bytes", pa.int64()),  # max over the metric's rows
        pa.field("peak_reserved_bytes", pa.int64()),
        pa.field("peak_rss_bytes", pa.int64()),
        pa.field("alloc_retries", pa.int64()),  # summed over the metric's rows
        pa.field("summary_version", pa.int32(), nullable=False),  # SUMMARY_VERSION when written
    ]
)

#: The definition of a `summaries` row (queries/intermediate.sql, `computed_summaries`): a
#: stored row of another version is not read (the trial is summarised from its steps instead)
#: until `stepscope compact` rewrites it.
SUMMARY_VERSION = 2  # 2: metrics 'compute' and 'forward_loss', and durations_ms

TABLES: dict[str, pa.Schema] = {
    "sweeps": SWEEPS, "trials": TRIALS, "steps": STEPS, "devices": DEVICES, "summaries": SUMMARIES,
}


def check_rows(table: str, rows: list[dict]) -> pa.Table:
    """Build an Arrow table for `table` from `rows`, refusing any row whose keys differ
    from the schema: a missing or extra column is a bug in the writer, not a null."""
    schema = TABLES[table]
    names = set(schema.names)
    for i, row in enumerate(rows):
        keys = set(row)
        if keys != names:
            missing, extra = sorted(names - keys), sorted(keys - names)
            raise ValueError(f"{table} row {i}: missing columns {missing}, unknown columns {extra}")
    return pa.Table.from_pylist(rows, schema=schema)
