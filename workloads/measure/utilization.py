"""FLOPs, peaks and MFU of a trial: the runner's glue to `flops`, `peaks` and `identity`.

Everything here runs outside the timed loop: counting before it, rates after it.
A failure here never fails the trial; it leaves the columns null and says why
in `flops_error`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

from stepscope.errors import one_line
from stepscope.workloads.measure.records import DeviceFacts, Work

#: The `trials` columns this module fills, in the schema's order: `Work`'s fields.
COLUMNS = tuple(f.name for f in dataclasses.fields(Work))


def cache_dir() -> str:
    """Where a node keeps its measured matmul peaks: $STEPSCOPE_CACHE_DIR, else ~/.cache/stepscope."""
    return os.environ.get("STEPSCOPE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "stepscope")


def count(builder: Callable, params: Mapping[str, Any]) -> Work:
    """FLOPs of one training step (`flops.count_step_flops`), and a built-in's analytic count."""
    from stepscope.workloads.measure.flops import count_step_flops
    from stepscope.workloads.registry import BUILTINS

    try:
        fc = count_step_flops(builder, dict(params))
    except Exception as exc:  # an uncountable workload still gets timed
        return Work(flops_error=one_line(exc, limit=500))
    info = BUILTINS.get(params["workload"])
    analytic = info.analytic_flops(params) if info is not None and info.analytic_flops is not None else None
    return Work(
        flops_forward=fc.forward,
        flops_backward=fc.backward,
        flops_analytic=analytic,
        flops_uncounted=",".join(fc.uncounted) or None,
    )


def rates(torch: Any, device: Any, precision: str, work: Work, wall_s: float | None,
          steps: int, facts: DeviceFacts) -> Work:
    """`work` with the achieved TFLOP/s over the measured steps (`wall_s` seconds for
    `steps` steps) and MFU against both peaks filled in."""
    from stepscope.workloads.measure import peaks

    variant = sheet = measured = achieved = None
    if device.type == "cuda":
        variant = _variant(facts)
        peak = peaks.datasheet_peak(variant, precision) if variant else None
        sheet = peak.tflops if peak else None
    try:
        measured = peaks.measured_matmul_peak(device, precision, cache_dir(), torch_module=torch)
    except Exception:  # e.g. a precision this device cannot multiply in
        measured = None
    flops = (work.flops_forward or 0) + (work.flops_backward or 0)
    if flops and wall_s and steps > 0:
        achieved = flops / (wall_s / steps) / 1e12
    return dataclasses.replace(
        work,
        gpu_variant=variant,
        peak_tflops_datasheet=sheet,
        peak_tflops_measured=measured,
        achieved_tflops=achieved,
        mfu_datasheet=achieved / sheet if achieved is not None and sheet else None,
        mfu_measured=achieved / measured if achieved is not None and measured else None,
    )


def _variant(facts: DeviceFacts) -> str | None:
    from stepscope.workloads.measure.identity import gpu_variant

    ident = facts.identity  # NVML's, read once by stepscope.workloads.measure.device.describe
    if ident is not None and ident.gpu_variant:
        return ident.gpu_variant
    if not facts.device_name:
        return None
    power = ident.power_limit_w if ident is not None else None
    try:
        return gpu_variant(facts.device_name, facts.device_memory_bytes, power).label
    except Exception:  # an unknown board: no datasheet row, the measured peak still applies
        return None
