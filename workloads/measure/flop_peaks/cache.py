"""The measured peak's cache: one figure per node and condition, in
`cache_dir`/matmul_peaks.json, read back until it expires.

`matmul_peak` measures the matmul peak (`matmul.measure`) once per node and per every
condition that changes it (`conditions`: threads and CPU affinity on a CPU; the power
limit, clocks and MIG slice on a GPU) and caches the median. A cached figure expires after
`peak_max_age_s` (7 days, $STEPSCOPE_PEAK_MAX_AGE_DAYS); `revalidation` measures it again
when a step ran faster than it allows (`CachedPeak.tolerance`). `cache_entries`,
`clear_cache` and `refresh_peaks` are what `stepscope peaks` lists, clears and refreshes.

Importing this module does not import torch.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stepscope.workloads.measure.flop_peaks import matmul
from stepscope.workloads.measure.flop_peaks.conditions import conditions as key_conditions
from stepscope.workloads.measure.flop_peaks.conditions import device_identity
from stepscope.workloads.measure.flop_peaks.precisions import PeakError, canonical_precision

CACHE_FILE = "matmul_peaks.json"
# Cache entries and keys of this format only; older files keep their entries (another
# stepscope on the node may read them) but their keys never match: format 1's are JSON
# lists, later ones JSON objects holding the format. The format is part of the key and
# goes up whenever the way the figure is measured changes, so that no figure measured
# the old way is read as the new: 2, time-based and keyed by threads, power and clocks;
# 3, the second operand transposed (nn.Linear's layout).
CACHE_FORMAT = 3

# Expiry. A cached figure expires after MAX_AGE_DAYS: the key holds what a process can
# read (torch, threads, affinity, power limit, clocks), not what changes under it (a driver,
# firmware, BIOS or microcode update, the CPU governor, a machine busy while the figure was
# taken), which changes on the scale of maintenance windows, commonly weekly. One measurement
# costs matmul.CPU_MIN_S (0.3 s) per precision on a CPU and CUDA_MIN_S (2 s) on a GPU, so once a week
# per key is negligible, and a figure taken on a busy machine lives a week at most even if no
# step ever runs faster than it. A choice, not a measured constant; $STEPSCOPE_PEAK_MAX_AGE_DAYS
# sets it (0: measure on every read; inf: never expire).
MAX_AGE_ENV = "STEPSCOPE_PEAK_MAX_AGE_DAYS"
MAX_AGE_DAYS = 7.0
# A step may run above the median batch rate up to the best batch (it is what the device
# demonstrably reached): the tolerance is max / median - 1, capped at TOLERANCE_CAP, since a
# figure whose best batch is more than 10% above its median was timed under varying load or
# clocks and bounds nothing tightly. A choice, not a measured constant.
TOLERANCE_CAP = 0.10


def peak_max_age_s() -> float:
    """Seconds a cached measured peak stays valid: $STEPSCOPE_PEAK_MAX_AGE_DAYS (a number of
    days, 0 or more; `inf` never expires) times 86,400, else MAX_AGE_DAYS (7). Raises
    PeakError for anything else, naming the variable."""
    text = os.environ.get(MAX_AGE_ENV, "").strip()
    if not text:
        return MAX_AGE_DAYS * 86400.0
    try:
        days = float(text)
    except ValueError:
        days = math.nan
    if not days >= 0:  # NaN and negatives
        raise PeakError(f"{MAX_AGE_ENV}: {text!r} is not a number of days of 0 or more (e.g. 7, 0.5, or inf)")
    return days * 86400.0


@dataclass(frozen=True, slots=True)
class CachedPeak:
    """One measured matmul peak, as the cache holds it.

    `tflops` is the median batch rate (TFLOP/s), `min_tflops`/`max_tflops` the slowest
    and fastest kept batches'. `age_s`: seconds since `measured_at` (UTC ISO 8601), inf
    where the entry does not say when it was measured. `measured_now`: this call
    measured it (a new key, `refresh`, or an expired entry), else it was read."""

    key: dict[str, Any]  # `cache_key`'s fields: host, device, uuid, precision, torch, conditions
    tflops: float
    min_tflops: float
    max_tflops: float
    samples: int | None
    measured_at: str | None
    age_s: float
    measured_now: bool = False

    @property
    def tolerance(self) -> float:
        """How far above the median a step may run, as a fraction: max / median - 1 (the
        fastest batch was reached), 0 or more, at most TOLERANCE_CAP."""
        return min(max(self.max_tflops / self.tflops - 1.0, 0.0), TOLERANCE_CAP)

    @property
    def spread(self) -> float:
        """(max - min) / median of the kept batches' rates, a fraction."""
        return (self.max_tflops - self.min_tflops) / self.tflops


def measured_matmul_peak(
    device: Any, precision: str, cache_dir: str | os.PathLike, *, refresh: bool = False, torch_module: Any = None,
    nvml: Any = None,
) -> float:
    """Dense matmul TFLOP/s this device reaches in `precision`: `matmul_peak(...).tflops`."""
    return matmul_peak(device, precision, cache_dir, refresh=refresh, torch_module=torch_module, nvml=nvml).tflops


def matmul_peak(
    device: Any, precision: str, cache_dir: str | os.PathLike, *, refresh: bool = False, torch_module: Any = None,
    nvml: Any = None, max_age_s: float | None = None,
) -> CachedPeak:
    """The dense matmul peak this device reaches in `precision`, measured once per node and condition.

    The median of `matmul.measure`'s batches, cached in
    `cache_dir`/matmul_peaks.json under everything that changes it
    (`cache_key`): host, device name and UUID (a MIG slice has its own), precision,
    torch version; on a CPU torch's thread count and the CPU affinity size; on a
    GPU the enforced power limit and the application and maximum clocks NVML
    reports (None where NVML cannot say). A second call under the same key reads
    the cache unless the entry is older than `max_age_s` (default `peak_max_age_s()`,
    7 days); `refresh=True` measures again. `nvml`: pynvml or a stand-in.
    Raises PeakError for fp8 (no plain torch.matmul), an unknown precision or a bad
    $STEPSCOPE_PEAK_MAX_AGE_DAYS.
    """
    p = canonical_precision(precision)
    if p == "fp8":
        raise PeakError("precision: fp8 has no plain torch.matmul; measure it with a scaled-mm benchmark")
    max_age_s = peak_max_age_s() if max_age_s is None else max_age_s
    torch = torch_module
    if torch is None:
        import torch
    dev = torch.device(device)
    name, uuid = device_identity(torch, dev)
    conditions = key_conditions(torch, dev, uuid, nvml)
    key = cache_key(socket.gethostname(), name, uuid, p, str(torch.__version__), conditions)
    path = Path(cache_dir) / CACHE_FILE
    if not refresh:
        hit = _cached(key, _read_cache(path).get(key))
        if hit is not None and hit.age_s <= max_age_s:
            return hit

    m = matmul.measure(torch, dev, p)
    cache = _read_cache(path)  # another worker on this node may have written meanwhile
    cache[key] = {
        "format": CACHE_FORMAT, "tflops": m.tflops, "min_tflops": m.min_tflops, "max_tflops": m.max_tflops,
        "samples": m.samples, "discarded": m.discarded, "duration_s": m.duration_s, "n": m.n, "reps": m.reps,
        "device": name, "precision": p, "conditions": conditions,
        "measured_at": _now().isoformat(timespec="seconds"),
    }
    _write_cache(path, cache)
    return dataclasses.replace(_cached(key, cache[key]), measured_now=True)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _age_s(measured_at: Any, now: dt.datetime) -> float:
    """Seconds since an ISO 8601 time; inf for a missing or unreadable one, 0 for a future one."""
    try:
        when = dt.datetime.fromisoformat(measured_at)
    except (TypeError, ValueError):
        return math.inf
    if when.tzinfo is None:  # written as UTC; an entry without an offset is read as UTC
        when = when.replace(tzinfo=dt.timezone.utc)
    return max((now - when).total_seconds(), 0.0)


def _cached(key: str, record: Any, now: dt.datetime | None = None) -> CachedPeak | None:
    """A cache entry of this format as a CachedPeak, or None for anything else."""
    value = _entry(record)
    if value is None:
        return None
    lo, hi = _positive(record.get("min_tflops")), _positive(record.get("max_tflops"))
    samples = record.get("samples")
    return CachedPeak(
        key=_key_fields(key), tflops=value, min_tflops=min(lo or value, value), max_tflops=max(hi or value, value),
        samples=samples if isinstance(samples, int) and not isinstance(samples, bool) else None,
        measured_at=record.get("measured_at") if isinstance(record.get("measured_at"), str) else None,
        age_s=_age_s(record.get("measured_at"), now or _now()),
    )


def _positive(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def _key_fields(key: str) -> dict[str, Any]:
    """A key's fields (format aside); {} for a key that is not a JSON object (format 1)."""
    try:
        fields = json.loads(key)
    except ValueError:
        return {}
    return {k: v for k, v in fields.items() if k != "format"} if isinstance(fields, dict) else {}


# ---------------------------------------------------------------- the cache, for `stepscope peaks`


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One entry of the cache file as `stepscope peaks` lists it. `state`: `fresh` (read
    for a trial), `expired` (older than the age limit: measured again when next read), or
    `other_format` (written by another stepscope version or damaged: never read here)."""

    key: dict[str, Any]
    format: int | None
    state: str
    peak: CachedPeak | None  # None for other_format


def cache_entries(cache_dir: str | os.PathLike, *, max_age_s: float | None = None) -> list[CacheEntry]:
    """Every entry of `cache_dir`/matmul_peaks.json, in file order; [] without a file.
    Raises PeakError for a bad $STEPSCOPE_PEAK_MAX_AGE_DAYS."""
    max_age_s = peak_max_age_s() if max_age_s is None else max_age_s
    now, out = _now(), []
    for key, record in _read_cache(Path(cache_dir) / CACHE_FILE).items():
        peak = _cached(key, record, now)
        fmt = record.get("format") if isinstance(record, dict) else None
        state = "other_format" if peak is None else ("expired" if peak.age_s > max_age_s else "fresh")
        out.append(CacheEntry(_key_fields(key), fmt if isinstance(fmt, int) else None, state, peak))
    return out


def clear_cache(cache_dir: str | os.PathLike) -> int:
    """Remove `cache_dir`/matmul_peaks.json; the number of entries it held (0 without one)."""
    path = Path(cache_dir) / CACHE_FILE
    held = len(_read_cache(path))
    path.unlink(missing_ok=True)
    return held


def refresh_peaks(device: str | None, precisions: tuple[str, ...], cache_dir: str | os.PathLike, *,
                  torch_module: Any = None) -> list[CachedPeak]:
    """Measure the matmul peak of `device` (`cpu`, `cuda`, or None: cuda where torch sees
    one, else cpu; cuda is its current device) in each of `precisions` (aliases measured
    once) again, replacing their cache entries. Raises PeakError for cuda on a node
    without one, or a precision that cannot be measured."""
    torch = torch_module
    if torch is None:
        import torch
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise PeakError("device: torch sees no CUDA device on this node; measure device 'cpu' instead")
    out = []
    for p in dict.fromkeys(canonical_precision(x) for x in precisions):
        out.append(matmul_peak(device, p, cache_dir, refresh=True, torch_module=torch))
    return out


def cache_key(host: str, name: str, uuid: str | None, precision: str, torch_version: str,
              conditions: dict[str, Any]) -> str:
    """The cache key: a JSON object (old files used JSON lists, which never equal one)."""
    return json.dumps({"format": CACHE_FORMAT, "host": host, "device": name, "uuid": uuid, "precision": precision,
                       "torch": torch_version, **conditions}, sort_keys=True)


def _entry(record: Any) -> float | None:
    """The figure of a cache entry of this format, or None for anything else."""
    if not isinstance(record, dict) or record.get("format") != CACHE_FORMAT:
        return None
    value = record.get("tflops")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    # Write-then-rename so a concurrent reader on the node sees the old file or the
    # new one, never half of one.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".matmul_peaks.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
