"""Row builders for the tables and a tmp store to write them into.

Rows carry exactly the columns of `stepscope.storage.schema` (the writer refuses any
other), with plausible values; a test overrides only what it is about. Tests
reach the builders through the `rows` and `write` fixtures rather than by
importing this module, which pytest may load under another name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from stepscope.storage.schema import DEVICES, PHASES, TRIALS
from stepscope.storage.store import Store

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)


def sweep_row(sweep_id: str = "s1", created_at: datetime = T0, **overrides) -> dict:
    row = {
        "sweep_id": sweep_id,
        "name": "demo",
        "spec": "name: demo\n",
        "spec_hash": "0" * 64,
        "spec_path": "demo.yaml",
        "created_at": created_at,
        "trial_count": 1,
        "isolation": "process",
        "ray_address": None,
        "host": "driver",
        "stepscope_version": "0.1.0",
        "schema_version": 1,
    }
    return _merge(row, overrides)


def trial_row(
    sweep_id: str = "s1", trial_id: str = "t1", trial_index: int = 0, **overrides
) -> dict:
    row = {
        "sweep_id": sweep_id,
        "trial_id": trial_id,
        "trial_index": trial_index,
        "repeat": 0,
        "attempt": 1,
        "status": "ok",
        "error": None,
        "workload": "mlp",
        "batch_size": 16,
        "precision": "fp32",
        "optimizer": "sgd",
        "iterations": 3,
        "warmup": 1,
        "seed": 0,
        "params": '{"workload": "mlp"}',
        "config_id": "c-mlp",
        "gpu": None,
        "device_kind": "cpu",
        "device_name": "cpu",
        "device_index": None,
        "device_uuid": None,
        "device_memory_bytes": None,
        "sm_count": None,
        "compute_capability": None,
        "driver_version": None,
        "cpu_count": 4,
        "num_threads": 4,
        "host": "worker",
        "node_id": None,
        "pid": 1234,
        "python_version": "3.11.7",
        "torch_version": "2.4.0",
        "cuda_version": None,
        "cudnn_version": None,
        "started_at": T0,
        "ended_at": T0 + timedelta(seconds=5),
        "model_to_device_ms": 1.5,
        "param_count": 1000,
        "measured_steps": 3,
        "measured_wall_s": 0.1,
        "samples_per_s": 480.0,
        "final_loss": 0.5,
        "nonfinite_step": None,
        "flops_forward": None,
        "flops_backward": None,
        "flops_analytic": None,
        "flops_uncounted": None,
        "flops_error": None,
        "achieved_tflops": None,
        "gpu_variant": None,
        "peak_tflops_datasheet": None,
        "peak_tflops_measured": None,
        "mfu_datasheet": None,
        "mfu_measured": None,
        "param_bytes": None,
        "grad_bytes": None,
        "optimizer_state_bytes": None,
        "activation_bytes": None,
        "alloc_retries": None,
        "cuda_context_bytes": None,
        "nvml_used_bytes": None,
        "non_torch_bytes": None,
        "nvml_memory_scope": None,
        "stepscope_version": "0.1.0",
        "schema_version": 1,
    }
    return _merge(_nulls_for_the_rest(row, TRIALS), overrides)


def step_rows(
    sweep_id: str = "s1",
    trial_id: str = "t1",
    durations: Mapping[str, Sequence[float]] | None = None,
    warmup: int = 0,
    host_extra_ms: float = 0.5,
) -> list[dict]:
    """One row per step and phase. `durations[phase][i]` is step i's duration_ms (the
    first `warmup` steps are warmup); a phase left out takes 1.0 ms every step.
    host_ms is duration_ms + host_extra_ms."""
    durations = dict(durations or {"forward": [1.0]})
    n = len(next(iter(durations.values())))
    rows = []
    for i in range(n):
        for index, phase in enumerate(PHASES):
            ms = float(durations[phase][i]) if phase in durations else 1.0
            rows.append(
                {
                    "sweep_id": sweep_id,
                    "trial_id": trial_id,
                    "iteration": i,
                    "is_warmup": i < warmup,
                    "phase": phase,
                    "phase_index": index,
                    "duration_ms": ms,
                    "host_ms": ms + host_extra_ms,
                    "gpu_gap_ms": None,
                    "peak_rss_bytes": None,
                    "peak_allocated_bytes": None,
                    "peak_reserved_bytes": None,
                    "alloc_retries": None,
                }
            )
    return rows


def device_row(sweep_id: str = "s1", trial_id: str = "t1", device_uuid: str = "CPU-worker",
               observed_at: datetime = T0, **overrides) -> dict:
    row = {
        "sweep_id": sweep_id,
        "trial_id": trial_id,
        "device_uuid": device_uuid,
        "observed_at": observed_at,
        "device_kind": "cpu",
        "device_name": "cpu",
        "gpu_variant": None,
        "device_memory_bytes": None,
        "sm_count": None,
        "compute_capability": None,
        "pci_bus_id": None,
        "sm_clock_mhz": None,
        "mem_clock_mhz": None,
        "sm_clock_max_mhz": None,
        "mem_clock_max_mhz": None,
        "power_limit_w": None,
        "ecc_enabled": None,
        "mig_enabled": None,
        "driver_version": None,
        "cuda_driver_version": None,
        "cuda_version": None,
        "cudnn_version": None,
        "torch_version": "2.4.0",
        "cpu_model": "cpu",
        "cpu_count": 4,
        "host_memory_bytes": 2**34,
        "host": "worker",
        "node_id": None,
        "nvml_unavailable": None,
    }
    return _merge(_nulls_for_the_rest(row, DEVICES), overrides)


def write_trial(
    store: Store,
    sweep_id: str = "s1",
    trial_id: str = "t1",
    durations: Mapping[str, Sequence[float]] | None = None,
    warmup: int = 0,
    **trial_overrides,
) -> None:
    """A trial's steps and its committing trials row, as the runner writes them."""
    store.write_trial(
        sweep_id,
        trial_id,
        trial_row(sweep_id, trial_id, **trial_overrides),
        step_rows(sweep_id, trial_id, durations, warmup),
    )


def _nulls_for_the_rest(row: dict, schema) -> dict:
    """Every column not set above is nullable (a measurement a CPU trial does not have):
    null unless a test sets it, so a new nullable column needs no change here."""
    for field in schema:
        if field.name not in row:
            assert field.nullable, f"set a value for the non-nullable column {field.name}"
            row[field.name] = None
    return row


def _merge(row: dict, overrides: dict) -> dict:
    unknown = set(overrides) - set(row)
    if unknown:
        raise KeyError(f"not a column: {sorted(unknown)}")
    return {**row, **overrides}


@pytest.fixture
def store(tmp_path) -> Store:
    """A local store that does not exist until something is written to it."""
    return Store(str(tmp_path / "store"))


@pytest.fixture
def rows() -> SimpleNamespace:
    """The row builders: rows.sweep(...), rows.trial(...), rows.steps(...), rows.device(...), rows.T0."""
    return SimpleNamespace(sweep=sweep_row, trial=trial_row, steps=step_rows, device=device_row, T0=T0)


@pytest.fixture
def write(store) -> SimpleNamespace:
    """Write into `store`: write.sweep(sweep_id, created_at, ...), write.trial(sweep_id,
    trial_id, durations, warmup, **trial columns)."""

    def sweep(sweep_id: str = "s1", created_at: datetime = T0, **overrides) -> None:
        store.write_sweep(sweep_row(sweep_id, created_at, **overrides))

    def trial(*args, **kwargs) -> None:
        write_trial(store, *args, **kwargs)

    return SimpleNamespace(sweep=sweep, trial=trial)
