"""The measurement code: what times, counts and identifies a training step. Imports torch
(lazily, where `stepscope trial` and the fork server need it first).

- `runner`: `run_trial`, the loop: warmup, measured steps, the six phases, statuses.
- `timing`: phase timers (CUDA events on a GPU, perf_counter_ns on a CPU).
- `measurers`: what the loop measures beside the timer, step by step (memory peaks per phase,
  saved tensors, the loss trace, the NVML sampler), behind one protocol, `StepMeasurer`.
- `batch`: moving a batch to the device and calling the model with it.
- `precision`: what each precision name means for the model, the data and the step.
- `memory`: parameter/gradient/optimizer/activation bytes, per-phase memory peaks, NVML memory.
- `flops`, `utilization`, `flop_peaks/`: FLOPs of a step, datasheet and measured FLOP peaks, MFU
  (`peaks` is the old name of `flop_peaks`, re-exported for its remaining callers).
- `device`, `identity`, `nvml`: which device a trial ran on, exactly (NVML).
- `records`: the typed records these hand the runner, and the rows made from them.

Ray-free and DuckDB-free: it runs on a GPU node without either.
"""
