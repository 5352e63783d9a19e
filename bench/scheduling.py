"""What does scheduling a trial cost, with a fresh process per trial and with reused workers?

Runs N trivial trials (a 1-layer, 8-unit MLP, one step, no warmup) on a local Ray
cluster, once with `isolation: reuse` and once with `isolation: process`, through
the real scheduler (`stepscope.orchestrator.scheduler.run_sweep`, stores and all), and prints:

- trials_per_s: trials finished per second of sweep wall time (the first worker's
  start-up included, amortised over the trials);
- slot_ms: the median time a trial held its slot (GPU or node): from the driver handing
  it to Ray to the driver collecting its result (the driver hands out no more trials
  than there are slots, so this is the trial's whole cost as the cluster sees it);
- in_trial_ms: the median time inside `run_trial` (from the rows: ended_at - started_at:
  building the model, the step, writing two Parquet files; with `process`, importing
  torch too, since a fresh worker imports it there);
- overhead_ms: slot_ms - in_trial_ms, the cost of scheduling a trial (Ray task
  dispatch, the worker process start for `process`, the driver's bookkeeping);
- first_ms: the first trial's slot time (a cold worker).

Beside them, the cost of starting Python and importing torch in a fresh process, which
is what `process` isolation pays per trial by design. Goals: reuse overhead under 50 ms;
what process isolation adds per trial (its slot_ms minus reuse's) no more than starting
Python and importing torch.

The cluster is deploy/local-cluster.sh's (a head and two fake-GPU workers, so two
slots), started and stopped here unless --address names a running one.

    python bench/scheduling.py [--trials 200] [--address HOST:PORT]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the stepscope package of this checkout (src/stepscope links to the folders)

SPEC = """
name: sched-{isolation}
isolation: {isolation}
fixed: {{workload: mlp, depth: 1, width: 8, input_dim: 8, batch_size: 2, iterations: 1, warmup: 0}}
grid:
  seed: [{seeds}]
"""


def python_import_torch_s(repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_one(isolation: str, n: int, address: str, workdir: str) -> dict:
    from stepscope.analysis.warehouse import connect
    from stepscope.orchestrator.grid import expand
    from stepscope.orchestrator.scheduler import Session, run_sweep
    from stepscope.orchestrator.spec import parse_spec
    from stepscope.storage.store import Store

    spec = parse_spec(SPEC.format(isolation=isolation, seeds=", ".join(map(str, range(n)))))
    trials = expand(spec)
    store = Store(os.path.join(workdir, isolation))
    with Session(address) as session:
        slots = int(sum(nd.gpus for nd in session.nodes())) or 1
        t0 = time.perf_counter()
        outcome = run_sweep(session, spec, trials, store, sweep_id=f"bench-{isolation}")
        wall = time.perf_counter() - t0
    if outcome.count("ok") != n:
        bad = [o for o in outcome.outcomes if o.status != "ok"][:3]
        raise SystemExit(f"{isolation}: {n - outcome.count('ok')} trials did not end ok: {bad}")
    durations = [
        r[0] for r in connect(store).execute(
            "select epoch_ms(ended_at) - epoch_ms(started_at) from trials"
        ).fetchall()
    ]
    in_trial = statistics.median(durations)
    slot_ms = statistics.median(o.seconds for o in outcome.outcomes) * 1e3
    return {
        "isolation": isolation, "trials": n, "slots": slots, "wall_s": wall,
        "trials_per_s": n / wall, "slot_ms": slot_ms, "in_trial_ms": in_trial,
        "overhead_ms": slot_ms - in_trial, "first_ms": outcome.outcomes[0].seconds * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--address", default=None, help="a running cluster; default: start deploy/local-cluster.sh")
    args = ap.parse_args()

    env = {**os.environ, "STEPSCOPE_LOCAL_PORT": os.environ.get("STEPSCOPE_LOCAL_PORT", "28400"),
           "STEPSCOPE_LOCAL_DIR": os.environ.get("STEPSCOPE_LOCAL_DIR", "/tmp/ssbench")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    started = False
    address = args.address
    if address is None:
        subprocess.run(["bash", str(ROOT / "deploy" / "local-cluster.sh"), "up"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        started = True
        address = f"127.0.0.1:{env['STEPSCOPE_LOCAL_PORT']}"
        os.environ["RAY_AUTH_MODE"] = "token"
    try:
        baseline = python_import_torch_s()
        with tempfile.TemporaryDirectory() as workdir:
            rows = [run_one(iso, args.trials, address, workdir) for iso in ("reuse", "process")]
    finally:
        if started:
            subprocess.run(["bash", str(ROOT / "deploy" / "local-cluster.sh"), "down"], env=env,
                           stdout=subprocess.DEVNULL)

    print(f"{args.trials} trivial trials per row on {address} ({rows[0]['slots']} slots); "
          f"python + import torch in a fresh process: {baseline * 1e3:.0f} ms")
    print(f"{'isolation':<10} {'trials':>6} {'wall_s':>7} {'trials_per_s':>12} {'slot_ms':>8} "
          f"{'in_trial_ms':>11} {'overhead_ms':>11} {'first_ms':>8}")
    for r in rows:
        print(f"{r['isolation']:<10} {r['trials']:>6} {r['wall_s']:>7.1f} {r['trials_per_s']:>12.2f} "
              f"{r['slot_ms']:>8.1f} {r['in_trial_ms']:>11.1f} {r['overhead_ms']:>11.1f} {r['first_ms']:>8.0f}")
    reuse, process = rows
    print(f"goal: reuse overhead < 50 ms: {'met' if reuse['overhead_ms'] < 50 else 'NOT met'} "
          f"({reuse['overhead_ms']:.1f} ms)")
    extra = process["slot_ms"] - reuse["slot_ms"]
    print(f"goal: what process isolation adds per trial (slot_ms process - reuse = {extra:.0f} ms) "
          f"<= python + import torch ({baseline * 1e3:.0f} ms): {'met' if extra <= baseline * 1e3 else 'NOT met'}")


if __name__ == "__main__":
    main()
