"""What does the NVML sampler (stepscope.workloads.measure.sampler) cost the trial it watches?

Two figures, each the median of --rounds rounds:

- sample_us: the wall time of one `NvmlSampler.sample()` (SM clock, memory clock,
  power draw, temperature, clock event reasons: five NVML calls), called back to back
  --samples times on the calling thread.
- main-thread cost: a busy pure-Python loop on the main thread (the shape of a
  launch-bound training step: the host thread never waits) runs for --seconds with no
  sampler, then with a sampler thread at the default interval (100 ms) and at a stress
  interval (--stress-ms), and its iteration rate is compared. `slowdown_pct` is how
  much slower the loop ran; `main_us_per_sample` spreads the lost time over the
  samples taken, i.e. what one sample took from the main thread (the GIL it held, the
  thread switches). `bound_pct` is samples x sample_us / seconds: the share of the main
  thread's time the samples would take if every microsecond of them held the GIL (true
  of the fake). `noise_pct` is the spread (max - min) of the rounds' no-sampler rates:
  a slowdown inside it is not resolved on this machine. With a busy main thread the
  sampler thread gets the GIL at most once per `sys.getswitchinterval()` (5 ms by
  default), so a stress interval below that takes fewer samples than asked; at the
  default 100 ms a sample starts at most ~5 ms late.

With a GPU and a driver (pynvml's nvmlInit succeeds and the first GPU answers) the real
pynvml is used: its calls are ctypes foreign calls, which release the GIL while the
driver answers, so the main-thread cost is below sample_us. Without one, the faithful
stand-in from tests/workloads/measure/nvml_fakes.py: pure Python, which holds the GIL all
through, so its main-thread cost is an upper bound of the Python part only. The
`nvml` column says which.

    python bench/sampler_cost.py                       # ~15 s
    python bench/sampler_cost.py --rounds 5 --seconds 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from stepscope.workloads.measure.sampler import DEFAULT_INTERVAL_S, NvmlSampler

ROOT = Path(__file__).resolve().parents[1]


def nvml_and_uuid() -> tuple[object, str, str]:
    """The real pynvml and its first GPU where a driver answers, else the test stand-in."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(0))
        finally:
            pynvml.nvmlShutdown()
        return pynvml, uuid.decode() if isinstance(uuid, bytes) else uuid, "pynvml (real GPU)"
    except Exception:  # no pynvml, no driver, no GPU
        pass
    sys.path.insert(0, str(ROOT / "tests" / "workloads"))
    from nvml_fakes import MIB, FakeNVML

    uuid = "GPU-00000000-0000-0000-0000-000000000000"
    gpus = {uuid: {"name": "NVIDIA H100 80GB HBM3", "memory": 81559 * MIB, "power_mw": 700_000, "clocks": {},
                   "sm_mhz": [1980, 1755], "mem_mhz": [2619], "power_usage_mw": [690_000, 701_000],
                   "temp_c": [63, 64], "reasons": [0, 1]}}
    return FakeNVML(gpus), uuid, "fake (pure Python, holds the GIL)"


def sample_us(nvml: object, uuid: str, n: int) -> float:
    sampler = NvmlSampler(uuid, interval_s=3600, nvml=nvml).start()  # the thread sleeps all through
    try:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            sampler.sample()
        return (time.perf_counter_ns() - t0) / n / 1e3
    finally:
        sampler.stop()


def busy_rate(seconds: float) -> float:
    """Iterations per second of a pure-Python loop that never waits."""
    end = time.perf_counter() + seconds
    count, x = 0, 0
    while True:
        for _ in range(1000):
            x = (x * 31 + 7) % 1000003
        count += 1000
        if time.perf_counter() >= end:
            return count / seconds


def main_thread_cost(nvml: object, uuid: str, seconds: float, interval_s: float | None) -> tuple[float, int]:
    """(iterations per second of the busy loop, samples taken), with a sampler at
    `interval_s` running beside it, or none."""
    if interval_s is None:
        return busy_rate(seconds), 0
    sampler = NvmlSampler(uuid, interval_s=interval_s, nvml=nvml).start()
    rate = busy_rate(seconds)
    got = sampler.stop()
    return rate, got.nvml_samples or 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.5, help="busy-loop time per measurement")
    ap.add_argument("--samples", type=int, default=2000, help="back-to-back samples for sample_us")
    ap.add_argument("--stress-ms", type=float, default=1.0, help="a sampling interval far below the default")
    args = ap.parse_args()

    nvml, uuid, kind = nvml_and_uuid()
    per_sample = statistics.median(sample_us(nvml, uuid, args.samples) for _ in range(args.rounds))
    rows = []
    for label, interval in (("default", DEFAULT_INTERVAL_S), ("stress", args.stress_ms / 1e3)):
        slowdowns, costs, counts, bases = [], [], [], []
        for _ in range(args.rounds):
            base, _ = main_thread_cost(nvml, uuid, args.seconds, None)
            rate, samples = main_thread_cost(nvml, uuid, args.seconds, interval)
            lost_s = max(0.0, (base - rate) / base * args.seconds)
            slowdowns.append(100 * (base - rate) / base)
            costs.append(lost_s / samples * 1e6 if samples else float("nan"))
            counts.append(samples)
            bases.append(base)
        count = statistics.median(counts)
        rows.append((label, interval * 1e3, count, statistics.median(slowdowns), statistics.median(costs),
                     100 * count * per_sample / 1e6 / args.seconds, 100 * (max(bases) - min(bases)) / min(bases)))

    print(f"nvml: {kind}; sample_us (one sample, 5 NVML calls, calling thread): {per_sample:.1f}")
    print(f"{'interval':>8} {'ms':>7} {'samples':>8} {'slowdown_pct':>13} {'main_us_per_sample':>19} "
          f"{'bound_pct':>10} {'noise_pct':>10}")
    for label, ms, samples, slowdown, cost, bound, noise in rows:
        print(f"{label:>8} {ms:7.1f} {samples:8.0f} {slowdown:13.2f} {cost:19.1f} {bound:10.3f} {noise:10.2f}")


if __name__ == "__main__":
    main()
