"""expand(spec) -> trials: the grid's cartesian product, per target GPU and repeat,
minus `exclude`, in a deterministic order, each with a stable id. Pure."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence

from stepscope.orchestrator.spec import SweepSpec, check_size, value_key
from stepscope.workloads.registry import resolve_params
from stepscope.workloads.trial import Trial


def grid_points(spec: SweepSpec) -> list[dict]:
    """Every combination of grid values (first key varies slowest), with `fixed`
    merged in and excluded points dropped. Parameters are not yet resolved."""
    keys = [k for k, _ in spec.grid]
    fixed = dict(spec.fixed)
    excluded = _exclusions(spec.exclude)
    points = []
    for combo in itertools.product(*(values for _, values in spec.grid)):
        point = {**fixed, **dict(zip(keys, combo, strict=True))}
        if not _excluded(point, excluded):
            points.append(point)
    return points


def _exclusions(rules: Sequence[tuple]) -> dict[tuple[str, ...], set[tuple]]:
    """`exclude` as sets of value keys, one set per combination of parameter names, so
    a point is checked with one lookup per combination rather than one per entry.
    Values match as `spec.value_key` says: 1 and 1.0 match; true and 1 do not."""
    out: dict[tuple[str, ...], set[tuple]] = {}
    for rule in rules:
        names = tuple(sorted(k for k, _ in rule))
        out.setdefault(names, set()).add(tuple(value_key(v) for _, v in sorted(rule, key=lambda kv: kv[0])))
    return out


def _excluded(point: dict, exclusions: dict[tuple[str, ...], set[tuple]]) -> bool:
    return any(
        all(k in point for k in names) and tuple(value_key(point[k]) for k in names) in values
        for names, values in exclusions.items()
    )


def trial_id(params: dict, gpu: str | None, repeat: int) -> str:
    """Stable across runs and machines: a hash of what is measured, nothing else."""
    doc = json.dumps({"params": params, "gpu": gpu, "repeat": repeat}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def expand(spec: SweepSpec, gpu_types: Sequence[str] | None = None) -> list[Trial]:
    """Order: target GPU, then repeat, then grid point. Repeats are spread through
    the sweep rather than run back to back, so slow drift hits all of them alike.

    For `gpus: each`, `gpu_types` are the types the cluster has (the scheduler
    asks it); without them the trials carry no type yet (what `plan` shows).
    """
    targets = tuple(gpu_types) if spec.gpus_each and gpu_types else spec.gpus
    check_size(spec)  # the grid's product, before it is expanded
    points = grid_points(spec)
    check_size(spec, len(points), gpu_types=len(targets) if targets else None)
    resolved = [resolve_params(p) for p in points]
    trials: list[Trial] = []
    for gpu in targets or (None,):
        for repeat in range(spec.repeats):
            for params in resolved:
                trials.append(
                    Trial(
                        index=len(trials),
                        trial_id=trial_id(params, gpu, repeat),
                        repeat=repeat,
                        gpu=gpu,
                        params=dict(params),
                    )
                )
    return trials
