"""How much does stepscope's runner slow a training step, next to a plain PyTorch loop?

For each built-in workload (mlp, resnet, gpt; registry defaults, a CPU-friendly batch
size each) this times the same training step two ways, on the CPU, in fp32:

- plain:  a hand-written loop with no timers -- make_batch, .to(device), model(x),
          loss_fn, backward, AdamW step, zero_grad(set_to_none=True);
- runner: `stepscope.workloads.measure.runner.run_trial(trial, "bench", None)`, i.e. the real `_loop`
          with its phase timers and bookkeeping (store=None: nothing is written).

Both run `--warmup` unmeasured steps, then `--iterations` measured ones, and the number
kept is the wall time of the measured steps only divided by their count (the runner's
own `measured_wall_s / measured_steps`; the plain loop timed the same way with
`perf_counter_ns`). That is one round; `--rounds` rounds are run per workload.

How to read the table:

- plain_ms, runner_ms: the median over rounds of each side's mean step time.
- ratio: runner_ms / plain_ms. 1.00 means the runner costs nothing; the goal is <= 1.03.
- ratio_range: min-max of the per-round ratios (runner over the plain run of the same
  round). A wide range means the machine was noisy: trust the ratio only when it is
  well inside the goal, or rerun with more rounds. Rounds are kept short (seconds) so
  the two runs of a round see the same machine; on a shared machine, more rounds help
  more than more iterations.

Fairness choices:

- A fresh model per round for both sides. `run_trial` builds its model on every call,
  so the plain side does too: `torch.manual_seed(seed)` then the workload's own builder
  with the same resolved params. Both start each round from identical weights, the
  same batch pool and an empty AdamW state, and both pay (outside the timed region)
  for building and for first-step allocations.
- The order alternates: plain then runner in even rounds, runner then plain in odd
  ones, so neither side is always the one that runs on warm caches and allocator free
  lists, or always the one that meets the neighbour's burst on a shared machine.
- `gc.collect()` before each side, so one side does not pay for the other's garbage.
- Threads: `--threads` (default 1) for both sides: it goes into the trial's
  `num_threads`, which the runner passes to `torch.set_num_threads`, and the plain side
  sets the same. Why not torch's default (one thread per core)? On a small shared
  machine every OpenMP parallel region waits for its slowest thread, so a neighbour
  that takes one core for a moment stalls whole steps, many times over: per-round
  ratios then swing too widely to read anything. One thread only loses its share of
  a core. The runner's own overhead is Python work on the main thread and does not
  depend on the thread count; `--threads 0` keeps torch's default (try it on a quiet
  machine).
- fp32 matmul precision: the runner sets "highest", the default, which the plain side
  therefore shares.
- CPU only. On a GPU the runner reads its CUDA events without waiting for them (the
  host runs ahead as a plain loop does); `bench/gpu_check.py` sets it against plain GPU
  loops with and without a per-step sync.

Usage:

    python bench/overhead.py [--rounds R] [--iterations N] [--warmup W]
                             [--workloads mlp,resnet,gpt] [--threads T]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from time import perf_counter_ns

import torch

from stepscope.workloads.measure.runner import run_trial
from stepscope.workloads.registry import load_builder, resolve_params
from stepscope.workloads.trial import Trial

#: Batch sizes that make one step take roughly 5-100 ms on one CPU thread at the
#: registry's default model sizes (mlp 4x256, resnet 18 at 32x32, gpt 2x128 at 64 tokens).
#: (over half of resnet's step is AdamW over its 11M parameters, so its batch matters little.)
BATCH_SIZES = {"mlp": 512, "resnet": 8, "gpt": 8}
GOAL = 1.03
SEED = 0


@dataclass(frozen=True, slots=True)
class Result:
    """Per-round mean step times (ms) of both sides for one workload."""

    workload: str
    batch_size: int
    plain_ms: tuple[float, ...]
    runner_ms: tuple[float, ...]

    @property
    def plain_median(self) -> float:
        return statistics.median(self.plain_ms)

    @property
    def runner_median(self) -> float:
        return statistics.median(self.runner_ms)

    @property
    def ratio(self) -> float:
        return self.runner_median / self.plain_median

    @property
    def round_ratios(self) -> list[float]:
        return [r / p for p, r in zip(self.plain_ms, self.runner_ms, strict=True)]


def trial_params(
    workload: str, batch_size: int, iterations: int, warmup: int, threads: int
) -> dict:
    """The resolved params both sides use: registry defaults plus the bench's settings."""
    return resolve_params(
        {
            "workload": workload,
            "batch_size": batch_size,
            "precision": "fp32",
            "optimizer": "adamw",
            "iterations": iterations,
            "warmup": warmup,
            "device": "cpu",
            "seed": SEED,
            "num_threads": threads,
        }
    )


def plain_step_ms(p: dict) -> float:
    """Mean ms per measured step of a hand-written loop over the same model and batches."""
    if p["num_threads"]:  # as the runner does: 0 leaves torch's setting alone
        torch.set_num_threads(p["num_threads"])
    torch.manual_seed(p["seed"])  # as the runner does, before building
    workload = load_builder(p["workload"])(dict(p))
    device = torch.device("cpu")
    model = workload.model.to(device)
    model.train()
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=p["lr"])
    make_batch, loss_fn = workload.make_batch, workload.loss_fn

    def step() -> None:
        x, y = make_batch()
        x, y = x.to(device), y.to(device)
        out = model(x)
        loss = loss_fn(out, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(p["warmup"]):
        step()
    # CPU work is synchronous: the clock reads are the only "sync" needed.
    start = perf_counter_ns()
    for _ in range(p["iterations"]):
        step()
    return (perf_counter_ns() - start) / 1e6 / p["iterations"]


def runner_step_ms(p: dict, round_index: int) -> float:
    """Mean ms per measured step of `run_trial`, from the row it returns."""
    trial = Trial(
        index=round_index,
        trial_id=f"bench-{p['workload']}-{round_index}",
        repeat=round_index,
        gpu=None,
        params=dict(p),
    )
    row = run_trial(trial, "bench", None)
    if row["status"] != "ok" or not row["measured_steps"]:
        raise RuntimeError(f"runner trial {trial.label} ended {row['status']}: {row['error']}")
    return row["measured_wall_s"] * 1e3 / row["measured_steps"]


def measure(
    workload: str, batch_size: int, rounds: int, iterations: int, warmup: int, threads: int
) -> Result:
    p = trial_params(workload, batch_size, iterations, warmup, threads)
    plain, runner = [], []
    for r in range(rounds):
        sides = ("plain", "runner") if r % 2 == 0 else ("runner", "plain")
        for side in sides:
            gc.collect()
            if side == "plain":
                plain.append(plain_step_ms(p))
            else:
                runner.append(runner_step_ms(p, r))
    return Result(workload, batch_size, tuple(plain), tuple(runner))


def format_table(results: Sequence[Result]) -> str:
    header = ("workload", "batch", "plain_ms", "runner_ms", "ratio", "ratio_range")
    rows = [
        (
            r.workload,
            str(r.batch_size),
            f"{r.plain_median:.3f}",
            f"{r.runner_median:.3f}",
            f"{r.ratio:.3f}",
            f"{min(r.round_ratios):.3f}-{max(r.round_ratios):.3f}",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in (header, *rows)
    ]
    return "\n".join(line.rstrip() for line in lines)


def _workload_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BATCH_SIZES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown workload(s) {', '.join(unknown) or '(none given)'}; use some of "
            + ",".join(BATCH_SIZES)
        )
    return names


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds", type=_positive, default=9, help="interleaved rounds (default 9)"
    )
    parser.add_argument(
        "--iterations", type=_positive, default=30, help="measured steps per run (default 30)"
    )
    parser.add_argument(
        "--warmup", type=_non_negative, default=5, help="unmeasured steps first (default 5)"
    )
    parser.add_argument(
        "--workloads",
        type=_workload_list,
        default=list(BATCH_SIZES),
        help="comma-separated (default mlp,resnet,gpt)",
    )
    parser.add_argument(
        "--threads",
        type=_non_negative,
        default=1,
        help="torch CPU threads, both sides; 0 = torch's default (default 1)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"torch {torch.__version__}, cpu ({os.cpu_count()} cores), threads={torch.get_num_threads()}, fp32, adamw; "
        f"{args.rounds} rounds x ({args.warmup} warmup + {args.iterations} measured) steps per side"
    )
    t0 = perf_counter_ns()
    results = []
    for name in args.workloads:
        results.append(
            measure(
                name, BATCH_SIZES[name], args.rounds, args.iterations, args.warmup, args.threads
            )
        )
    print(format_table(results))
    print(f"goal: ratio <= {GOAL}")
    over = [r.workload for r in results if r.ratio > GOAL]
    print(f"over the goal: {', '.join(over)}" if over else "all within the goal")
    print(f"({(perf_counter_ns() - t0) / 1e9:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
