"""FLOPs, FLOP peaks, MFU and HFU of a trial: the runner's glue to `flops`, `flop_peaks` and `identity`.

Everything here runs outside the timed loop: counting before it, rates after it.
A failure here never fails the trial; it leaves the columns null and says why
in `flops_error`.

The conventions are PaLM's (Chowdhery et al. 2022, appendix B,
https://arxiv.org/abs/2204.02311), which nanoGPT's `estimate_mfu` follows
(https://github.com/karpathy/nanoGPT/blob/master/model.py):

- MFU = model FLOPs per step (forward + backward, no recomputation) / step time / peak;
- HFU = hardware FLOPs per step (model FLOPs + the forward that activation
  checkpointing recomputes) / step time / peak.

Without checkpointing the two are equal; with it, HFU > MFU, and only MFU
compares fairly across implementations of the same model.
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


def peak_cache_dir() -> str:
    """Where a node keeps its measured matmul peaks: $STEPSCOPE_CACHE_DIR, else ~/.cache/stepscope."""
    return os.environ.get("STEPSCOPE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "stepscope")


def count(builder: Callable, params: Mapping[str, Any]) -> Work:
    """FLOPs of one training step (`flops.count_step_flops`): forward, backward proper and
    recompute, each per step of the whole batch; and a built-in's analytic count."""
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
        flops_recompute=fc.recompute,
        flops_analytic=analytic,
        flops_uncounted=",".join(fc.uncounted) or None,
        flops_device=fc.device_used,
    )


def rates(torch: Any, device: Any, precision: str, work: Work, wall_s: float | None,
          steps: int, facts: DeviceFacts) -> Work:
    """`work` with its rates over the measured steps (`wall_s` seconds for `steps` steps)
    filled in: achieved model and hardware TFLOP/s (10^12 FLOP/s), and MFU and HFU
    (fractions) against both peaks, the datasheet's (CUDA only) and the measured one.
    A rate is None where its FLOPs, the time or its peak is missing. The measured peak
    is revalidated against the step's rate (`flop_peaks.checked_matmul_peak`: re-measured
    when the step beat it); `mfu_flag` names why a share may be above 1, or says the
    peak was measured again (`flop_peaks.FLAGS`); None when neither. Shares are stored as
    computed, never clipped."""
    from stepscope.workloads.measure import flop_peaks

    variant = sheet = measured = None
    if device.type == "cuda":
        # The exact variant's dense figure, scaled to the slice on a MIG instance.
        try:
            dp = flop_peaks.device_datasheet_peak(facts, precision)
        except flop_peaks.PeakError:
            dp = None
        variant = dp.variant if dp is not None else flop_peaks.device_variant(facts)
        sheet = dp.tflops if dp is not None else None
    model = (work.flops_forward or 0) + (work.flops_backward or 0)
    achieved = _tflops(model, wall_s, steps)
    hardware = _tflops(model + (work.flops_recompute or 0), wall_s, steps)
    measured = measured_flag = None
    try:
        # Checked against what ran (hardware FLOPs, >= model FLOPs): a cached figure below the
        # step's rate is measured again; one the step still beats is flagged.
        check = flop_peaks.checked_matmul_peak(device, precision, peak_cache_dir(), hardware, torch_module=torch)
        measured, measured_flag = check.peak.tflops, check.flag
    except Exception:  # e.g. a precision this device cannot multiply in
        pass
    mfu_sheet, hfu_sheet = _share(achieved, sheet), _share(hardware, sheet)
    return dataclasses.replace(
        work,
        gpu_variant=variant,
        peak_tflops_datasheet=sheet,
        peak_tflops_measured=measured,
        achieved_tflops=achieved,
        achieved_hardware_tflops=hardware,
        mfu_datasheet=mfu_sheet,
        mfu_measured=_share(achieved, measured),
        hfu_datasheet=hfu_sheet,
        hfu_measured=_share(hardware, measured),
        mfu_flag=flop_peaks.flag_rates(measured_flag, (mfu_sheet, hfu_sheet)),
    )


def _tflops(flops_per_step: int, wall_s: float | None, steps: int) -> float | None:
    """FLOPs per step over the mean step time, in TFLOP/s; None without FLOPs or time."""
    if not flops_per_step or not wall_s or steps <= 0:
        return None
    return flops_per_step / (wall_s / steps) / 1e12


def _share(achieved: float | None, peak: float | None) -> float | None:
    return achieved / peak if achieved is not None and peak else None
