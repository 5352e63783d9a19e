"""FLOP peaks: the matmul throughput an MFU divides by, the datasheet's and the one measured
on this node. (Memory peaks are `stepscope.workloads.measure.memory`'s.)

- `precisions`: the datasheet rows a stepscope precision maps to; `PeakError`.
- `datasheet`: the dense peak of every GPU variant in every precision, each with its
  source (`PEAKS`, `datasheet_peak`).
- `boards`: the datasheet peak of the device a trial ran on: its exact variant, and on a
  MIG slice the slice's share of the board's SMs (`device_datasheet_peak`, `BOARD_SMS`).
- `matmul`: the matmul peak timed on the device itself (`measure`, `summarize`).
- `conditions`: what the measured figure's cache key holds of the device.
- `cache`: the measured figure, cached per node and condition, expiring after a week
  (`matmul_peak`, `measured_matmul_peak`; `cache_entries`, `clear_cache`, `refresh_peaks`
  for `stepscope peaks`).
- `revalidation`: the cached figure measured again when a step ran faster than it allows,
  the flags of `trials.mfu_flag`, and `mfu` (a share, never clipped).

The names below are the package's API; importing it does not import torch.
"""

from stepscope.workloads.measure.flop_peaks.boards import (
    BOARD_SMS,
    BoardSMs,
    DatasheetPeak,
    board_sm_count,
    device_datasheet_peak,
    device_variant,
)
from stepscope.workloads.measure.flop_peaks.cache import (
    CACHE_FILE,
    CACHE_FORMAT,
    MAX_AGE_DAYS,
    MAX_AGE_ENV,
    CachedPeak,
    CacheEntry,
    cache_entries,
    cache_key,
    clear_cache,
    matmul_peak,
    measured_matmul_peak,
    peak_max_age_s,
    refresh_peaks,
)
from stepscope.workloads.measure.flop_peaks.conditions import gpu_conditions
from stepscope.workloads.measure.flop_peaks.datasheet import PEAKS, Peak, datasheet_peak
from stepscope.workloads.measure.flop_peaks.matmul import MeasuredPeak, summarize
from stepscope.workloads.measure.flop_peaks.precisions import (
    MEASURABLE,
    TABLE_PRECISIONS,
    PeakError,
    canonical_precision,
)
from stepscope.workloads.measure.flop_peaks.revalidation import (
    FLAG_ABOVE_DATASHEET,
    FLAG_ABOVE_MEASURED,
    FLAG_REMEASURED,
    FLAG_WITHIN_TOLERANCE,
    FLAGS,
    PeakCheck,
    checked_matmul_peak,
    flag_rates,
    mfu,
)

__all__ = [
    "BOARD_SMS", "CACHE_FILE", "CACHE_FORMAT", "FLAGS", "FLAG_ABOVE_DATASHEET", "FLAG_ABOVE_MEASURED",
    "FLAG_REMEASURED", "FLAG_WITHIN_TOLERANCE", "MAX_AGE_DAYS", "MAX_AGE_ENV", "MEASURABLE", "PEAKS",
    "TABLE_PRECISIONS", "BoardSMs", "CacheEntry", "CachedPeak", "DatasheetPeak", "MeasuredPeak", "Peak",
    "PeakCheck", "PeakError", "board_sm_count", "cache_entries", "cache_key", "canonical_precision",
    "checked_matmul_peak", "clear_cache", "datasheet_peak", "device_datasheet_peak", "device_variant",
    "flag_rates", "gpu_conditions", "matmul_peak", "measured_matmul_peak", "mfu", "peak_max_age_s",
    "refresh_peaks", "summarize",
]
