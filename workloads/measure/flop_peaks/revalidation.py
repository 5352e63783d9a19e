"""A step's rate against the peaks: the measured figure revalidated when a step beat it,
the flags a trial's `mfu_flag` carries, and the share itself.

A share of a peak (MFU, HFU) is stored as computed, never clipped: a value above 1 says
the peak or the FLOP count is wrong, and `mfu_flag` says which (`FLAGS`).

Importing this module does not import torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from stepscope.workloads.measure.flop_peaks.cache import CachedPeak, matmul_peak
from stepscope.workloads.measure.flop_peaks.precisions import PeakError

# A figure measured less than REMEASURE_AFTER_S ago is not measured again because a step ran
# above it (it is as fresh as a figure gets; the step's FLOP count is the suspect): this bounds
# the cost of a workload whose count is wrong to one measurement per key per 5 minutes.
REMEASURE_AFTER_S = 300.0

#: `PeakCheck.flag` (the trials' `mfu_flag`), most serious first.
FLAG_ABOVE_DATASHEET = "above_datasheet_peak"  # above the datasheet peak: the FLOP count or the variant is wrong
FLAG_ABOVE_MEASURED = "above_measured_peak"  # above the measured peak by more than its tolerance, re-measured or fresh
FLAG_WITHIN_TOLERANCE = "within_peak_tolerance"  # above the measured median, within its batches' spread
FLAG_REMEASURED = "measured_peak_remeasured"  # the cached figure was below the step's rate; measured again, now fine
FLAGS = (FLAG_ABOVE_DATASHEET, FLAG_ABOVE_MEASURED, FLAG_WITHIN_TOLERANCE, FLAG_REMEASURED)


@dataclass(frozen=True, slots=True)
class PeakCheck:
    """`checked_matmul_peak`'s answer: the peak to divide by, and why a rate is flagged."""

    peak: CachedPeak
    flag: str | None  # one of FLAGS (a FLAG_ABOVE_DATASHEET aside, which `flag_rates` adds), or None
    remeasured: bool  # measured again because the rate was above the cached figure


def checked_matmul_peak(device: Any, precision: str, cache_dir: str | os.PathLike, rate_tflops: float | None, *,
                        torch_module: Any = None, nvml: Any = None) -> PeakCheck:
    """The measured peak (`matmul_peak`) to divide `rate_tflops` (the step's achieved
    TFLOP/s, hardware FLOPs: what ran) by, revalidated against it.

    A rate above the figure by more than its tolerance (`CachedPeak.tolerance`) means
    the figure is too low (timed on a busy machine, before a driver update...): unless
    it was measured less than REMEASURE_AFTER_S ago, it is measured again and the cache
    updated (flag FLAG_REMEASURED). A rate still above it gets FLAG_ABOVE_MEASURED, one
    above the median within the tolerance FLAG_WITHIN_TOLERANCE. Raises as `matmul_peak`.
    """
    peak = matmul_peak(device, precision, cache_dir, torch_module=torch_module, nvml=nvml)
    remeasured = False
    if _beyond(rate_tflops, peak) and not peak.measured_now and peak.age_s >= REMEASURE_AFTER_S:
        peak = matmul_peak(device, precision, cache_dir, refresh=True, torch_module=torch_module, nvml=nvml)
        remeasured = True
    if _beyond(rate_tflops, peak):
        flag = FLAG_ABOVE_MEASURED
    elif rate_tflops is not None and rate_tflops > peak.tflops:
        flag = FLAG_WITHIN_TOLERANCE
    else:
        flag = FLAG_REMEASURED if remeasured else None
    return PeakCheck(peak, flag, remeasured)


def _beyond(rate_tflops: float | None, peak: CachedPeak) -> bool:
    return rate_tflops is not None and rate_tflops > peak.tflops * (1.0 + peak.tolerance)


def flag_rates(measured_flag: str | None, datasheet_shares: tuple[float | None, ...]) -> str | None:
    """The one flag of a trial's MFU/HFU: FLAG_ABOVE_DATASHEET when a share of the datasheet
    peak is above 1 (a datasheet figure has no tolerance: the count or the variant is wrong),
    else `measured_flag` (`PeakCheck.flag`)."""
    if any(s is not None and s > 1.0 for s in datasheet_shares):
        return FLAG_ABOVE_DATASHEET
    return measured_flag


def mfu(achieved_tflops: float, peak_tflops: float) -> float:
    """Achieved over peak, as computed: never clipped, so a ratio above 1 stays one (it
    means the peak is wrong, a sparse figure, another variant's or another precision's, or
    the achieved FLOP count is; `flag_rates` and `checked_matmul_peak` name which).
    Raises PeakError for a peak that is not > 0 or a rate below 0: no share of anything."""
    if not peak_tflops > 0:
        raise PeakError(f"peak_tflops: must be > 0, got {peak_tflops!r}")
    if not achieved_tflops >= 0:
        raise PeakError(f"achieved_tflops: must be >= 0, got {achieved_tflops!r}")
    return achieved_tflops / peak_tflops
