"""The one place where a trial's records become rows of `trials`, `steps` and `devices`.

Columns and types are `stepscope.storage.schema`'s; the store refuses a row
whose keys differ from them (`schema.check_rows`), and tests/storage/test_columns.py
holds the records' fields, these rows and the warehouse's views to those columns, naming any
column that differs. A record's fields go in by name (`dataclasses.asdict`): a new column
that a record fills is its schema field and the record's field, nothing here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

from stepscope.storage.schema import PHASES, SCHEMA_VERSION, TrialStatus, version
from stepscope.workloads.measure.records import (
    DEVICE_ONLY_FIELDS,
    DeviceFacts,
    Measured,
    NvmlIdentity,
)
from stepscope.workloads.measure.timing import phase_ms
from stepscope.workloads.trial import Trial

#: The DeviceFacts fields that are `trials` columns, in DeviceFacts' order.
TRIAL_DEVICE_FIELDS = tuple(f.name for f in dataclasses.fields(DeviceFacts) if f.name not in DEVICE_ONLY_FIELDS)
_NO_FACTS = {name: None for name in TRIAL_DEVICE_FIELDS}


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def trial_row(trial: Trial, sweep_id: str, m: Measured, status: TrialStatus, error: str | None,
              started: dt.datetime, node_id: str | None, attempt: int, *, pid: int | None = None,
              gpu_model: str | None = None) -> dict[str, Any]:
    """The `trials` row. Throughput only for a trial whose loop ran to the end (`ok`, or
    `nonfinite`: its timings are whole, its loss is not): a partial loop has no rate."""
    p = trial.params
    status = TrialStatus(status)
    measured_steps = max(0, len(m.device_ms) - p["warmup"])
    wall_s = m.measured_wall_s if status in (TrialStatus.OK, TrialStatus.NONFINITE) else None
    samples_per_s = p["batch_size"] * measured_steps / wall_s if wall_s and measured_steps else None
    facts = {name: getattr(m.facts, name) for name in TRIAL_DEVICE_FIELDS} if m.facts else _NO_FACTS
    return {
        "sweep_id": sweep_id,
        "trial_id": trial.trial_id,
        "trial_index": trial.index,
        "repeat": trial.repeat,
        "attempt": attempt,
        "status": status.value,
        "error": error,
        "workload": p["workload"],
        "batch_size": p["batch_size"],
        "precision": p["precision"],
        "optimizer": p["optimizer"],
        "iterations": p["iterations"],
        "warmup": p["warmup"],
        "seed": p["seed"],
        "params": json.dumps(p, sort_keys=True),
        "config_id": trial.config_id,
        "gpu": trial.gpu,
        "gpu_model": gpu_model,
        **facts,
        "node_id": node_id,
        "pid": pid,
        "started_at": started,
        "ended_at": now(),
        "model_to_device_ms": m.model_to_device_ms,
        "param_count": m.param_count,
        "measured_steps": measured_steps,
        "measured_wall_s": wall_s,
        "samples_per_s": samples_per_s,
        "final_loss": m.final_loss,
        "nonfinite_step": m.nonfinite.iteration if m.nonfinite is not None else None,
        "unused_params": m.unused_params,
        **dataclasses.asdict(m.work),
        **dataclasses.asdict(m.mem),
        **dataclasses.asdict(m.samples),
        "stepscope_version": version(),
        "schema_version": SCHEMA_VERSION,
    }


def step_rows(trial: Trial, sweep_id: str, m: Measured) -> list[dict[str, Any]]:
    """One `steps` row per step and phase: warmup steps first, flagged `is_warmup`."""
    warmup = trial.params["warmup"]
    rows = []
    no_gaps = (None,) * len(PHASES)
    for it, (dev, gaps, host_ns, (rss, alloc, reserved, retries)) in enumerate(
        zip(m.device_ms, m.gaps_ms, m.host_ns, m.phase_memory_peaks, strict=True)
    ):
        host = phase_ms(host_ns)
        if dev is None:  # a CPU: wall time is device time, and there is no device to sit idle
            dev, gaps = host, no_gaps
        for i, phase in enumerate(PHASES):
            rows.append(
                {
                    "sweep_id": sweep_id,
                    "trial_id": trial.trial_id,
                    "iteration": it,
                    "is_warmup": it < warmup,
                    "phase": phase,
                    "phase_index": i,
                    "duration_ms": dev[i],
                    "host_ms": host[i],
                    "gpu_gap_ms": gaps[i],
                    "peak_rss_bytes": rss[i],
                    "peak_allocated_bytes": alloc[i],
                    "peak_reserved_bytes": reserved[i],
                    "alloc_retries": retries[i],
                }
            )
    return rows


def device_row(facts: DeviceFacts, *, sweep_id: str, trial_id: str, node_id: str | None,
               observed_at: Any) -> dict[str, Any]:
    """The `devices` row for the device a trial ran on."""
    ident = facts.identity or NvmlIdentity()
    cuda = facts.device_kind == "cuda"
    return {
        "sweep_id": sweep_id,
        "trial_id": trial_id,
        "device_uuid": facts.device_uuid,
        "observed_at": observed_at,
        "device_kind": facts.device_kind,
        "device_name": facts.device_name,
        "gpu_variant": ident.gpu_variant,
        "device_memory_bytes": facts.device_memory_bytes,
        "sm_count": facts.sm_count,
        "compute_capability": facts.compute_capability,
        "pci_bus_id": ident.pci_bus_id,
        "sm_clock_mhz": ident.sm_clock_mhz,
        "mem_clock_mhz": ident.mem_clock_mhz,
        "sm_clock_max_mhz": ident.sm_clock_max_mhz,
        "mem_clock_max_mhz": ident.mem_clock_max_mhz,
        "power_limit_w": ident.power_limit_w,
        "power_limit_default_w": ident.power_limit_default_w,
        "ecc_enabled": ident.ecc_enabled,
        "mig_enabled": ident.mig_enabled,
        "driver_version": facts.driver_version,
        "cuda_driver_version": ident.cuda_driver_version,
        "cuda_version": facts.cuda_version if cuda else None,
        "cudnn_version": facts.cudnn_version if cuda else None,
        "torch_version": facts.torch_version,
        "cpu_model": facts.cpu_model,
        "cpu_count": facts.cpu_count,
        "host_memory_bytes": facts.host_memory_bytes,
        "host": facts.host,
        "node_id": node_id,
        "nvml_unavailable": json.dumps(dict(ident.nvml_unavailable), sort_keys=True) if ident.nvml_unavailable else None,
    }
