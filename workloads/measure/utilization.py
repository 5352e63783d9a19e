"""FLOPs, peaks and MFU of a trial: the runner's glue to `flops`, `peaks` and `identity`.

Everything here runs outside the timed loop: counting before it, rates after it.
A failure here never fails the trial; it leaves the columns null and says why
in `flops_error`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

COLUMNS = (
    "flops_forward", "flops_backward", "flops_analytic", "flops_uncounted", "flops_error",
    "achieved_tflops", "gpu_variant", "peak_tflops_datasheet", "peak_tflops_measured",
    "mfu_datasheet", "mfu_measured",
)


def cache_dir() -> str:
    """Where a node keeps its measured matmul peaks: $STEPSCOPE_CACHE_DIR, else ~/.cache/stepscope."""
    return os.environ.get("STEPSCOPE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "stepscope")


def count(builder: Callable, params: Mapping[str, Any]) -> dict[str, Any]:
    from stepscope.workloads.measure.flops import count_step_flops
    from stepscope.workloads.registry import BUILTINS

    try:
        fc = count_step_flops(builder, dict(params))
    except Exception as exc:  # an uncountable workload still gets timed
        return {"flops_error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]}
    work: dict[str, Any] = {
        "flops_forward": fc.forward,
        "flops_backward": fc.backward,
        "flops_uncounted": ",".join(fc.uncounted) or None,
    }
    info = BUILTINS.get(params["workload"])
    if info is not None and info.analytic_flops is not None:
        work["flops_analytic"] = info.analytic_flops(params)
    return work


def rates(torch: Any, device: Any, precision: str, work: Mapping[str, Any], wall_s: float | None,
          steps: int, facts: Mapping[str, Any]) -> dict[str, Any]:
    """Achieved TFLOP/s over the measured steps, and MFU against both peaks."""
    from stepscope.workloads.measure import peaks

    out: dict[str, Any] = {}
    if device.type == "cuda":
        out["gpu_variant"] = _variant(facts)
        sheet = peaks.datasheet_peak(out["gpu_variant"], precision) if out["gpu_variant"] else None
        out["peak_tflops_datasheet"] = sheet.tflops if sheet else None
    try:
        out["peak_tflops_measured"] = peaks.measured_matmul_peak(device, precision, cache_dir(), torch_module=torch)
    except Exception:  # e.g. a precision this device cannot multiply in
        out["peak_tflops_measured"] = None
    flops = (work.get("flops_forward") or 0) + (work.get("flops_backward") or 0)
    if flops and wall_s and steps > 0:
        achieved = flops / (wall_s / steps) / 1e12
        out["achieved_tflops"] = achieved
        for kind in ("datasheet", "measured"):
            peak = out.get(f"peak_tflops_{kind}")
            out[f"mfu_{kind}"] = achieved / peak if peak else None
    return out


def _variant(facts: Mapping[str, Any]) -> str | None:
    from stepscope.workloads.measure.identity import gpu_variant

    ident = facts.get("identity") or {}  # NVML's, read once by stepscope.workloads.measure.device.describe
    if ident.get("gpu_variant"):
        return ident["gpu_variant"]
    name = facts.get("device_name")
    if not name:
        return None
    try:
        return gpu_variant(name, facts.get("device_memory_bytes"), ident.get("power_limit_w")).label
    except Exception:  # an unknown board: no datasheet row, the measured peak still applies
        return None
