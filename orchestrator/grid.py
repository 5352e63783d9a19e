"""expand(spec) -> trials: the grid's cartesian product, per target GPU and repeat,
minus `exclude`, in a deterministic order, each with a stable id. Pure."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence

from stepscope.orchestrator.spec import SweepSpec
from stepscope.workloads.registry import resolve_params
from stepscope.workloads.trial import Trial


def grid_points(spec: SweepSpec) -> list[dict]:
    """Every combination of grid values (first key varies slowest), with `fixed`
    merged in and excluded points dropped. Parameters are not yet resolved."""
    keys = [k for k, _ in spec.grid]
    fixed = dict(spec.fixed)
    points = []
    for combo in itertools.product(*(values for _, values in spec.grid)):
        point = {**fixed, **dict(zip(keys, combo, strict=True))}
        if not any(_matches(point, rule) for rule in spec.exclude):
            points.append(point)
    return points


def _matches(point: dict, rule: tuple) -> bool:
    return all(k in point and _same(point[k], v) for k, v in rule)


def _same(a: object, b: object) -> bool:
    # 1 and 1.0 match; True and 1 do not.
    return type(a) is type(b) and a == b or (
        isinstance(a, (int, float)) and isinstance(b, (int, float))
        and not isinstance(a, bool) and not isinstance(b, bool) and a == b
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
    resolved = [resolve_params(p) for p in grid_points(spec)]
    targets = tuple(gpu_types) if spec.gpus_each and gpu_types else spec.gpus
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
