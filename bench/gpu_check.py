"""The GPU check: on one GPU, in a few minutes, does stepscope attribute time and memory right?

    python bench/gpu_check.py                         # on a GPU node (about 4 minutes on an H200)
    python bench/gpu_check.py --only attribution,host # rerun some sections
    python bench/gpu_check.py --device cpu --quick --no-tests   # the CPU twin (what CI runs)

Sections, in order (`--only` takes their names; each has a time budget, printed with
the seconds it took):

- tests: `pytest -m gpu` over the test modules that hold GPU tests.
- attribution: a custom workload (`bench/gpucheck/sleepers.py`) does known device work
  in forward, loss, backward (a custom autograd Function) and optimizer step:
  `torch.cuda._sleep`, calibrated first in cycles per ms. Against the same workload
  without it, each phase's device time (steps.duration_ms) grows by its own work and
  no other's. On the CPU twin the work is a busy loop of the same length.
- host: host-only sleeps in `make_batch` (data) and `loss_fn`: they show in host_ms.
  With the GPU idle, a phase's events tick with the host, so its device time grows
  just as much (duration_ms = host_ms: the launch-bound signature) and the GPU's idle
  gaps (gpu_gap_ms) do not move: a phase's own host work stays inside its events.
  With 8 ms of device work queued before it, the loss's host sleep is hidden: its
  device time does not grow (GPU only).
- nvml: NVML's used bytes against torch's reserved pool around a 2 GiB tensor, then
  after freeing it (the CPU twin: the resident set around 256 MiB).
- bookkeeping: microseconds per phase boundary of the runner's timer and memory peaks.
- loops: the runner against a plain loop without and with a per-step sync, on a
  launch-bound and a compute-bound mlp (goal: <= 1.03 of the plain loop, compute bound).
- precisions: fp32, tf32, bf16, fp16, amp_bf16, amp_fp16 on one mlp: status ok, finite
  loss, exact bytes (param = grad = momentum = N x dtype size), MFU in (0, 1].
- grid: resnet and gpt in fp32, tf32, amp_bf16: the device's phases plus its idle gaps
  add up to the synchronised step (5%), exact bytes (Adam: 4N/4N/8N), MFU in (0, 1].
  (On the CPU twin: 10%, and MFU > 0 only; `sections.trial_checks` says why.)
- forkserver: every trial above ran in a child of one fork server (as `isolation:
  process` runs them); the server itself never loaded the CUDA driver (its
  /proc/<pid>/maps has no libcuda.so), while its children used the GPU.
- identity: the `devices` row read (NVML name, exact variant, UUID, clocks, power,
  MIG, driver), and NVML samples during the steps where `trials` has those columns.

Then one table, and exit 1 if any check failed (2: a module is missing). Rows are
PASS, FAIL, INFO (reported, not judged) or SKIP (cannot run here, and says why). A
section that raises or runs past its budget is a FAIL row; the next section runs.

Needs torch, pyarrow (and nvidia-ml-py for NVML); not Ray, DuckDB, click or pyyaml:
trials are built in code and run through `stepscope.orchestrator.forkserver`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the stepscope package of this checkout (src/stepscope links to the folders)
sys.path.insert(0, str(ROOT / "bench"))  # gpucheck: also how forked children find it (they get this sys.path)

NEEDED = {"torch": "torch", "pyarrow": "pyarrow"}
BUDGET_S = 480  # the whole check: 8 minutes on one GPU


def missing_modules() -> list[str]:
    """What to pip install before anything runs (nvidia-ml-py is optional: NVML facts)."""
    return [pkg for module, pkg in NEEDED.items() if importlib.util.find_spec(module) is None]


def parse(argv: list[str] | None) -> argparse.Namespace:
    from gpucheck.sections import SECTIONS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cuda (default) or the CPU twin")
    ap.add_argument("--quick", action="store_true", help="small models, few steps")
    ap.add_argument("--no-tests", action="store_true", help="skip `pytest -m gpu`")
    ap.add_argument("--only", metavar="SECTION[,SECTION]", help=f"run only these: {', '.join(SECTIONS)}")
    ap.add_argument("--keep", metavar="DIR", help="keep the store in DIR (default: a temporary directory)")
    ap.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for the whole check (default {BUDGET_S})")
    args = ap.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",")] if args.only else list(SECTIONS)
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        ap.error(f"--only: unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    args.sections = [s for s in SECTIONS if s in chosen]
    return args


def main(argv: list[str] | None = None) -> int:
    missing = missing_modules()
    if missing:
        print(f"gpu check: missing {', '.join(missing)}: pip install {' '.join(missing)}")
        return 2
    from gpucheck.report import FAIL, PASS, SKIP, Clock, Row, render_final, run_section
    from gpucheck.sections import SECTIONS, Ctx
    from gpucheck.trials import Children, Trials

    from stepscope.storage.store import Store

    args = parse(argv)
    clock = Clock()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    children = Children()
    rows: list[Row] = []
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="stepscope-gpu-check-") as tmp:
        store_root = Path(args.keep).resolve() if args.keep else Path(tmp) / "store"
        trials = Trials(children, Store(str(store_root)), f"gpu-check-{stamp}", clock.log)
        ctx = Ctx(device=args.device, quick=args.quick, clock=clock, children=children, trials=trials,
                  store_root=store_root, run_tests=not args.no_tests)
        clock.log(f"gpu check on {args.device}: sections {', '.join(args.sections)}; store {store_root}")
        try:
            for name in args.sections:
                fn, budget, what = SECTIONS[name]
                left = args.budget - clock.elapsed
                if left < 5:
                    rows.append(Row(name, "section", "not run", status=FAIL,
                                    note=f"the check's {args.budget:.0f} s were spent before it"))
                    continue
                budget = min(budget, left)
                clock.log(f"== {name}: {what} (budget {budget:.0f} s)")
                got, seconds[name] = run_section(name, lambda out, fn=fn: fn(ctx, out), budget, clock)
                rows += got
        finally:
            children.close()
            try:
                trials.write_sweep("gpu-check", {"check": "bench/gpu_check.py", "device": args.device,
                                                 "quick": args.quick, "sections": args.sections})
            except Exception as exc:  # the rows are what matter; a sweeps row is a convenience
                clock.log(f"could not write the sweeps row: {exc}")
    print()
    print(render_final(rows))
    print("seconds: " + ", ".join(f"{name} {s:.1f}" for name, s in seconds.items()) + f"; total {clock.elapsed:.1f}")
    failed = [r for r in rows if r.status == FAIL]
    skipped = [r for r in rows if r.status == SKIP]
    for r in failed:
        print(f"FAIL {r.section}: {r.check}: {r.measured} (expected {r.expected}) {r.note}".rstrip())
    passed = sum(r.status == PASS for r in rows)
    tail = f" ({len(skipped)} skipped: {', '.join(f'{r.section}/{r.check}' for r in skipped)})" if skipped else ""
    print(f"gpu check: {passed} passed, {len(failed)} failed{tail}")
    print("gpu check: " + ("passed" if not failed else f"{len(failed)} failure(s)"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
