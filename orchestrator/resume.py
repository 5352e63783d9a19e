"""Which sweep a run writes into, and which of its trials are already stored."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.spec import SweepSpec
from workloads.schema import RESULT_STATUSES
from workloads.store import Store


@dataclass(frozen=True, slots=True)
class ChosenSweep:
    sweep_id: str
    new: bool  # no sweeps row yet: the driver writes one
    done_ids: frozenset[str]  # trials stored as ok or oom: --resume skips them


def pick_sweep(store: Store, spec: SweepSpec, *, sweep_id: str | None, resume: bool) -> ChosenSweep:
    """`--sweep-id` wins; `--resume` continues the latest sweep of the same spec
    (same name and meaning) in the store; otherwise a new sweep."""
    from orchestrator.scheduler import new_sweep_id

    con = _connect(store)
    if sweep_id is None and resume:
        row = con.execute(
            "select sweep_id from sweeps where name = ? and spec_hash = ? order by created_at desc limit 1",
            [spec.name, spec.spec_hash],
        ).fetchone()
        sweep_id = row[0] if row else None
    if sweep_id is None:
        return ChosenSweep(new_sweep_id(spec), True, frozenset())
    exists = con.execute("select count(*) from sweeps where sweep_id = ?", [sweep_id]).fetchone()[0] > 0
    done: frozenset[str] = frozenset()
    if resume:
        statuses = sorted(RESULT_STATUSES)
        rows = con.execute(
            "select trial_id from trials where sweep_id = ? and status in (?, ?)", [sweep_id, *statuses]
        ).fetchall()
        done = frozenset(r[0] for r in rows)
    return ChosenSweep(sweep_id, not exists, done)


def _connect(store: Store):
    from analysis.warehouse import connect

    return connect(store)
