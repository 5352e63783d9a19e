"""The parts of bench/gpu_check.py (run that script; this package is not installed).

- `report`: result rows, the progress log, sections with a time budget each.
- `trials`: trials built in code (no YAML), run in fresh processes forked by one
  `stepscope.orchestrator.forkserver.ForkServer`, their rows read back with pyarrow.
- `sleepers`: the custom workload (`gpucheck.sleepers:build`) whose phases do known work.
- `probes`: what runs inside a forked child (calibration, NVML, bookkeeping cost, a CUDA
  probe) and what looks at the fork server from outside (`/proc/<pid>/maps`, fds).
- `loops`: plain PyTorch loops, with and without a per-step sync, beside the runner.
- `sections`: one function per section of the check.
"""
