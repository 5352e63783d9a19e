"""The matmul peak timed on the device itself: square matmuls, for long enough to reach
steady clocks, summarised as the median batch rate (`measure`).

The figure is a peak the hardware demonstrably reaches, to set beside the datasheet's;
`cache` keeps it per node and condition, and revalidates it. Importing this module does
not import torch: the callers hand it in.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any

from stepscope.workloads.measure.flop_peaks.precisions import PeakError

# Square sizes: large enough that a GPU's tensor cores are saturated (8192^3 is
# 1.1 TFLOP per matmul); on a CPU 1024, halved while one matmul would take
# longer than a batch.
CUDA_SIZE = 8192
CPU_SIZE, CPU_PROBE, CPU_MIN_SIZE = 1024, 512, 256
# Time-based: batches of back-to-back matmuls run until MIN_S seconds of them are
# done (and at least MIN_KEPT are kept); batches that start in the first WARM_S
# seconds (and always the first) are the ramp-up and are dropped; the peak is the
# median batch rate. GPU: 2 s in all, its first 0.5 s the ramp. A GPU's clocks settle only once its
# power controller has seen the sustained load, and NVML averages board power over
# 1 s on Ampere and newer (nvmlDeviceGetPowerUsage,
# https://docs.nvidia.com/deploy/nvml-api/group__nvmlDeviceQueries.html): a ~30 ms
# burst reads the boost clock a power-capped board cannot hold. Reasoning, not a
# measured constant; the sampler's clock and throttle columns show whether it held.
# CPU: 0.3 s, enough for tens of batches and short enough for the tests.
CUDA_MIN_S, CUDA_WARM_S, CUDA_BATCH_S = 2.0, 0.5, 0.05
CPU_MIN_S, CPU_WARM_S, CPU_BATCH_S = 0.3, 0.03, 0.02
MIN_KEPT = 5
MAX_FACTOR = 4  # stop after MAX_FACTOR * MIN_S whatever was kept (a device slower than planned)


@dataclass(frozen=True, slots=True)
class MeasuredPeak:
    """One measurement of the matmul peak: the median batch rate and its spread."""

    tflops: float  # median TFLOP/s over the kept batches
    min_tflops: float
    max_tflops: float
    samples: int  # batches kept
    discarded: int  # ramp-up batches dropped
    duration_s: float  # time the kept batches took, device time on a GPU
    n: int  # square size
    reps: int  # matmuls per batch


def measure(torch: Any, dev: Any, precision: str) -> MeasuredPeak:
    """Time square matmuls on `dev` in `precision` (a `MEASURABLE` one): batches sized by
    `_plan`, drawn until the device has run long enough (`summarize`), with TF32 set as a
    trial in that precision sets it, and restored after."""
    dtype = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    from stepscope.workloads.measure.precision import restore_tf32, set_tf32

    saved = set_tf32(torch, precision == "tf32")  # as a trial in this precision runs
    try:
        cuda = dev.type == "cuda"
        n, reps = _plan(torch, dev, dtype, CUDA_BATCH_S if cuda else CPU_BATCH_S)
        batches = _cuda_batches(torch, dev, dtype, n, reps) if cuda else _cpu_batches(torch, dev, dtype, n, reps)
        try:
            min_s, warm_s = (CUDA_MIN_S, CUDA_WARM_S) if cuda else (CPU_MIN_S, CPU_WARM_S)
            return summarize(batches, 2 * n**3 * reps, min_s, warm_s, n=n, reps=reps)
        finally:
            batches.close()
    finally:
        restore_tf32(torch, saved)


def summarize(batch_seconds: Iterator[float], flop_per_batch: float, min_s: float, warm_s: float, *,
              min_kept: int = MIN_KEPT, max_s: float | None = None, n: int = 0, reps: int = 0) -> MeasuredPeak:
    """Draw batch times (seconds) until `min_s` seconds have passed and `min_kept`
    batches are kept, or `max_s` (default MAX_FACTOR * min_s) have passed; drop the
    batches that start before `warm_s` (the first always); the median rate of the rest.
    """
    max_s = MAX_FACTOR * min_s if max_s is None else max_s
    elapsed, kept, discarded = 0.0, [], 0
    for seconds in batch_seconds:
        if elapsed < warm_s or discarded == 0:
            discarded += 1
        else:
            kept.append(seconds)
        elapsed += seconds
        if (elapsed >= min_s and len(kept) >= min_kept) or (elapsed >= max_s and kept):
            break
    if not kept:
        raise PeakError("measured peak: no batch was kept; the device gave no timings")
    rates = [flop_per_batch / max(t, 1e-12) / 1e12 for t in kept]
    return MeasuredPeak(statistics.median(rates), min(rates), max(rates), len(kept), discarded, sum(kept), n, reps)


def _plan(torch: Any, dev: Any, dtype: Any, batch_s: float) -> tuple[int, int]:
    """A size and a matmul count per batch that make a batch last about `batch_s`.

    On a CPU a probe at 512 predicts the larger size by n^3 (a CPU fp16 matmul can
    be 50x slower than fp32, so no fixed size fits every precision); one matmul
    at the chosen size then sets the count. On a GPU the size is CUDA_SIZE.
    """
    if dev.type == "cuda":
        n = CUDA_SIZE
    else:
        probe = max(_time_matmul(torch, dev, dtype, CPU_PROBE, 1), 1e-6)
        n = CPU_SIZE
        while n > CPU_MIN_SIZE and probe * (n / CPU_PROBE) ** 3 > batch_s:
            n //= 2
    one = max(_time_matmul(torch, dev, dtype, n, 1), 1e-6)
    return n, max(1, min(200, int(batch_s / one)))


def _time_matmul(torch: Any, dev: Any, dtype: Any, n: int, reps: int) -> float:
    """Seconds for `reps` back-to-back n x n matmuls on `dev` (a probe for `_plan`)."""
    a, b, c = _operands(torch, dev, dtype, n)
    if dev.type == "cuda":
        with torch.cuda.device(dev):  # events record on the current stream of `dev`
            # Sync so the warm-up and the allocations are finished before the start event
            # is recorded; otherwise the first timed matmul would queue behind them.
            torch.cuda.synchronize(dev)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                torch.matmul(a, b, out=c)
            end.record()
            # The one sync of the probe: elapsed_time needs the end event complete.
            end.synchronize()
            return start.elapsed_time(end) / 1e3
    t0 = perf_counter_ns()
    for _ in range(reps):
        torch.matmul(a, b, out=c)
    return (perf_counter_ns() - t0) / 1e9


def _operands(torch: Any, dev: Any, dtype: Any, n: int) -> tuple[Any, Any, Any]:
    a = torch.randn(n, n, device=dev, dtype=dtype)
    # The second operand transposed: nn.Linear's layout (x @ W.T), which training runs. On a
    # CPU in fp16, torch 2.13's matmul of two row-major operands takes a path ~13x slower,
    # so a peak timed that way sits below the steps' own rate (MFU above 1).
    b = torch.randn(n, n, device=dev, dtype=dtype).t()
    c = torch.empty(n, n, device=dev, dtype=dtype)
    torch.matmul(a, b, out=c)  # warm-up: cuBLAS/oneDNN pick and cache their kernel here
    return a, b, c


def _cpu_batches(torch: Any, dev: Any, dtype: Any, n: int, reps: int) -> Iterator[float]:
    a, b, c = _operands(torch, dev, dtype, n)
    while True:
        t0 = perf_counter_ns()
        for _ in range(reps):
            torch.matmul(a, b, out=c)
        yield (perf_counter_ns() - t0) / 1e9


def _cuda_batches(torch: Any, dev: Any, dtype: Any, n: int, reps: int) -> Iterator[float]:
    """Device seconds of each batch, bracketed by CUDA events, one batch always queued
    ahead of the one being read so the GPU never idles between batches (an idle gap
    would let the clocks drop and the power average fall)."""
    a, b, c = _operands(torch, dev, dtype, n)
    with torch.cuda.device(dev):  # events record on the current stream of `dev`
        # Sync so the warm-up and the allocations are finished before the first start event.
        torch.cuda.synchronize(dev)

        def enqueue() -> tuple[Any, Any]:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                torch.matmul(a, b, out=c)
            end.record()
            return start, end

        pending = enqueue()
        try:
            while True:
                queued = enqueue()  # the next batch goes in before this one is read
                # The one wait per batch: this batch's end event, with the next batch already
                # queued behind it; elapsed_time needs the end event complete.
                pending[1].synchronize()
                yield pending[0].elapsed_time(pending[1]) / 1e3
                pending = queued
        finally:
            # Leave no batch running when the caller stops reading.
            torch.cuda.synchronize(dev)

