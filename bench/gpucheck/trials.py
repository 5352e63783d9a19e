"""Trials built in code and run as `isolation: process` runs them, without Ray or YAML.

Parameters go through `stepscope.workloads.registry.resolve_params`, the validation a
spec's trials get (so the GPU image needs no pyyaml). Every trial, and every other piece
of device work of the check, runs in a fresh child forked by one
`stepscope.orchestrator.forkserver.ForkServer`: the server imports torch once, as a
Ray worker's does, and the `forkserver` section then asks whether the server itself ever
initialised CUDA while its children used the GPU.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import socket
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

from stepscope.orchestrator.forkserver import ForkServer
from stepscope.storage.schema import PHASES, SCHEMA_VERSION, version
from stepscope.storage.store import Store
from stepscope.workloads.measure.runner import run_trial
from stepscope.workloads.registry import BUILTINS, resolve_params
from stepscope.workloads.trial import Trial

BENCH = Path(__file__).resolve().parents[1]  # bench/: where `gpucheck.sleepers` imports from
#: What the fork server imports once: the same as `stepscope.orchestrator.scheduler.PRELOAD`
#: (a test holds them equal), spelled out here because the scheduler imports the spec
#: reader, which needs pyyaml, and the GPU image may not have it.
PRELOAD = ("torch", "torch._dynamo", "stepscope.workloads.measure.runner", *(w.module for w in BUILTINS.values()))


class Children:
    """The one fork server of the check, started on first use (again if it died)."""

    def __init__(self) -> None:
        self.server: ForkServer | None = None
        self.started = 0  # servers started: 1 unless one was closed (a section ran out of time)
        self.calls = 0  # children forked by the current server

    def call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        if self.server is None or not self.server.alive:
            self.server = ForkServer(PRELOAD)
            self.started += 1
            self.calls = 0
        self.calls += 1
        return self.server.call(fn, *args, **kwargs)

    @property
    def server_pid(self) -> int | None:
        return self.server.proc.pid if self.server is not None and self.server.alive else None

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


@dataclass
class Ran:
    """One trial's label, its `trials` row and its `steps` rows."""

    label: str
    row: dict
    steps: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.row.get("status") == "ok"


class Trials:
    """Runs trials in fresh children and keeps their rows; writes the sweep row at the end."""

    def __init__(self, children: Children, store: Store, sweep_id: str, log: Callable[[str], None]) -> None:
        self.children, self.store, self.sweep_id, self.log = children, store, sweep_id, log
        self.ran: list[Ran] = []

    def make(self, raw: dict) -> Trial:
        params = resolve_params(raw)
        serial = len(self.ran)
        # Unique per run: a trial asked for twice (a baseline) gets two ids, two files.
        doc = json.dumps({"params": params, "serial": serial, "sweep": self.sweep_id}, sort_keys=True)
        return Trial(index=serial, trial_id=hashlib.sha256(doc.encode()).hexdigest()[:16], repeat=0, gpu=None,
                     params=params)

    def run(self, label: str, raw: dict) -> Ran:
        trial = self.make(raw)
        started = perf_counter()
        row = self.children.call(run_trial, trial, self.sweep_id, self.store, search_paths=[str(BENCH)])
        ran = Ran(label, row, read_steps(self.store, self.sweep_id, trial.trial_id))
        self.ran.append(ran)
        error = f": {row['error']}" if row.get("error") else ""
        self.log(f"  trial {label}: {row['status']} in {perf_counter() - started:.1f} s (pid {row.get('pid')}){error}")
        return ran

    def write_sweep(self, name: str, spec: dict) -> None:
        """The `sweeps` row, so that a kept store (`--keep`) reads in `stepscope sql` too.
        `spec` is stored as JSON text (JSON is YAML)."""
        if not self.ran:
            return
        text = json.dumps(spec, sort_keys=True, indent=1)
        self.store.write_sweep({
            "sweep_id": self.sweep_id, "name": name, "spec": text,
            "spec_hash": hashlib.sha256(text.encode()).hexdigest(), "spec_path": None,
            "created_at": dt.datetime.now(dt.timezone.utc), "trial_count": len(self.ran), "isolation": "process",
            "ray_address": None, "host": socket.gethostname(), "stepscope_version": version(),
            "schema_version": SCHEMA_VERSION,
        })


def read_steps(store: Store, sweep_id: str, trial_id: str) -> list[dict]:
    import pyarrow.parquet as pq

    path = Path(store.partition_dir("steps", sweep_id)) / f"{trial_id}.parquet"
    return pq.read_table(path).to_pylist() if path.exists() else []


def read_table(store_root: Path, table: str, sweep_id: str = "*") -> list[dict]:
    """Every row of `table` in a local store (of one sweep, if given), with pyarrow (DuckDB
    is not needed)."""
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for path in sorted((store_root / table).glob(f"sweep_id={sweep_id}/*.parquet")):
        rows += pq.read_table(path).to_pylist()
    return rows


def phase_medians(steps: list[dict], column: str) -> dict[str, float | None]:
    """Per phase, the median of `column` over the measured steps (None where all are null)."""
    out: dict[str, float | None] = {}
    for phase in PHASES:
        values = [s[column] for s in steps if s["phase"] == phase and not s["is_warmup"] and s[column] is not None]
        out[phase] = statistics.median(values) if values else None
    return out
