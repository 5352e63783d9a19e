"""Which sweep a run writes into, and which of its trials are already stored."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

from stepscope.orchestrator.spec import SweepSpec
from stepscope.storage.schema import RESULT_STATUSES
from stepscope.storage.store import Store


def new_sweep_id(spec: SweepSpec) -> str:
    """`<name>-<UTC yyyymmdd-HHMMSS>-<4 hex digits>`: sorts by time, unique across drivers."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{spec.name}-{stamp}-{os.urandom(2).hex()}"


@dataclass(frozen=True, slots=True)
class ChosenSweep:
    sweep_id: str
    new: bool  # no sweeps row yet: the driver writes one
    done_ids: frozenset[str]  # trials stored as ok or oom: --resume skips them


def pick_sweep(store: Store, spec: SweepSpec, *, sweep_id: str | None, resume: bool) -> ChosenSweep:
    """`--sweep-id` wins; `--resume` continues the latest sweep of the same spec
    (same name and meaning) in the store; otherwise a new sweep."""
    # Read with pyarrow, not DuckDB: `stepscope trial` runs on GPU images without it.
    sweeps = store.read_rows("sweeps", ["sweep_id", "name", "spec_hash", "created_at"])
    if sweep_id is None and resume:
        same = [r for r in sweeps if r["name"] == spec.name and r["spec_hash"] == spec.spec_hash]
        sweep_id = max(same, key=lambda r: (r["created_at"], r["sweep_id"]))["sweep_id"] if same else None
    if sweep_id is None:
        return ChosenSweep(new_sweep_id(spec), True, frozenset())
    exists = any(r["sweep_id"] == sweep_id for r in sweeps)
    done: frozenset[str] = frozenset()
    if resume:
        # A trial's latest attempt decides, as in the trials view (one row per trial).
        latest: dict[str, dict] = {}
        for r in store.read_rows("trials", ["sweep_id", "trial_id", "status", "attempt", "ended_at"]):
            if r["sweep_id"] == sweep_id:
                seen = latest.get(r["trial_id"])
                if seen is None or _attempt_order(r) > _attempt_order(seen):
                    latest[r["trial_id"]] = r
        done = frozenset(t for t, r in latest.items() if r["status"] in RESULT_STATUSES)
    return ChosenSweep(sweep_id, not exists, done)


def _attempt_order(row: dict) -> tuple:
    """Later attempts, then later ends, sort last (nulls first), as the trials view orders them."""
    attempt, ended = row["attempt"], row["ended_at"]
    return (attempt is not None, attempt or 0, ended is not None, ended.timestamp() if ended else 0.0)
