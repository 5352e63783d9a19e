"""Category `faults`: `stepscope trial` when the workload misbehaves.

Each case is a one-trial spec naming `faulty:build` (fixtures/faulty.py, copied beside the
spec) with a `fault` and the place it strikes (build, make_batch, forward, loss, backward,
optimizer), or a broken module of its own, or a parameter that does not fit its column.
After `stepscope trial spec.yaml --index 0 --store store` the store's `trials` files are read
with pyarrow (not through the CLI) and judged:

- `correct row`: exactly one `trials` row, its status one of the case's expected statuses
  (`failed` with an error text, `oom`, `ok` where ok is right), the exit code agreeing
  (0 for ok/oom, 1 otherwise), no traceback, done within the timeout;
- `refused cleanly`: exit 2 with one `Error:` line and no row, for a spec value the trial
  could never store (seed 2**63, ...);
- `no row (unavoidable)`: the process was ended in a way no Python code survives
  (`os._exit`, SIGKILL, a segfault), or by a KeyboardInterrupt, which the runner leaves to
  the user (Ctrl-C) by design; under `stepscope run` the supervisor writes the row. A
  traceback on the way still counts as `traceback`;
- `NaN/Inf stored as ok`: a loss that was NaN or infinite at some step, stored as `ok`
  (right: a non-ok status such as `nonfinite`, or `failed`);
- `wrong row`: a row, but the wrong status, an empty error, or an exit code that disagrees;
- `no row`: a fault Python can catch, and no row;
- `traceback`, `hang` (over the timeout: e.g. a thread or child left running).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
from harness import Context, Proc, Result, pmap

TITLE = "trial fault modes (`stepscope trial`)"
CLASSES = ["correct row", "refused cleanly", "no row (unavoidable)", "NaN/Inf stored as ok", "wrong row",
           "no row", "traceback", "hang", "killed for memory", "unexpected", "other", "skipped"]
GOOD = {"correct row", "refused cleanly", "no row (unavoidable)"}

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "faulty.py"
TRIAL_TIMEOUT = 60.0
PLACES = ("build", "make_batch", "forward", "loss", "backward", "optimizer")
NONFINITE_OK = {"nonfinite", "failed"}


@dataclass
class FaultCase:
    name: str
    fixed: dict  # the spec's `fixed`, beside iterations, warmup and count_flops
    statuses: set[str]  # statuses a correct row may have
    workload: str = "faulty:build"
    module: str | None = None  # text of `broken.py` beside the spec
    unavoidable: bool = False  # no row is acceptable
    refusable: bool = False  # a clean exit 2 (no row) is acceptable
    nonfinite: bool = False  # the loss was NaN/Inf at some step
    check_rc: bool = True
    extra: dict = field(default_factory=dict)


def build_cases() -> list[FaultCase]:
    cases = []
    for place in PLACES:
        at = 1 if place != "build" else 0
        cases.append(FaultCase(f"RuntimeError in {place}", {"fault": "raise", "where": place, "at": at}, {"failed"}))
        if place not in ("make_batch", "backward"):
            cases.append(FaultCase(f"sys.exit(0) in {place}", {"fault": "exit0", "where": place, "at": at}, {"failed"}))
    one = lambda name, fault, where, statuses, at=1, **kw: FaultCase(  # noqa: E731
        name, {"fault": fault, "where": where, "at": at}, statuses, **kw)
    cases += [
        one("sys.exit(3) in build", "exit3", "build", {"failed"}, at=0),
        one("SystemExit('text') in loss", "systemexit_text", "loss", {"failed"}),
        one("KeyboardInterrupt in forward", "keyboard_interrupt", "forward", {"failed"}, unavoidable=True),
        one("os._exit(0) in forward", "os_exit0", "forward", {"failed"}, unavoidable=True),
        one("SIGKILL of itself in backward", "sigkill_self", "backward", {"failed"}, unavoidable=True),
        one("segfault in forward", "segfault", "forward", {"failed"}, unavoidable=True),
        one("MemoryError in build", "memory_error", "build", {"oom"}, at=0),
        one("32 TiB tensor in forward", "huge_alloc", "forward", {"oom"}),
        one("torch.OutOfMemoryError in optimizer", "torch_oom", "optimizer", {"oom"}),
        one("RecursionError in forward", "recursion", "forward", {"failed"}),
        one("non-UTF-8 error text in loss", "non_utf8", "loss", {"failed"}),
        one("10 MB error message in build", "huge_message", "build", {"failed"}, at=0),
        one("exception whose __str__ raises", "str_raises", "forward", {"failed"}),
        one("BaseException subclass in forward", "base_exception", "forward", {"failed"}),
        one("GeneratorExit in loss", "generator_exit", "loss", {"failed"}),
        # The loss is NaN/Inf: the runner should not call that `ok`.
        one("NaN loss at the warmup step only", "nan", "none", NONFINITE_OK | {"ok"}, at=0, nonfinite=False,
            check_rc=False),
        one("NaN loss at the first measured step", "nan", "none", NONFINITE_OK, at=1, nonfinite=True, check_rc=False),
        one("NaN loss at the last step", "nan", "none", NONFINITE_OK, at=3, nonfinite=True, check_rc=False),
        one("+inf loss at one step", "inf", "none", NONFINITE_OK, at=2, nonfinite=True, check_rc=False),
        one("-inf loss at one step", "neginf", "none", NONFINITE_OK, at=2, nonfinite=True, check_rc=False),
        one("NaN loss at every step", "nan", "none", NONFINITE_OK, at=-1, nonfinite=True, check_rc=False),
        one("float32 overflow to inf every step", "overflow", "none", NONFINITE_OK, at=-1, nonfinite=True, check_rc=False),
        # Workloads that break the protocol.
        one("loss not a scalar", "nonscalar", "none", {"failed"}),
        one("model returns None", "none_output", "none", {"failed"}),
        one("model without parameters", "no_params", "none", {"failed"}),
        one("make_batch returns 3 items", "batch_3tuple", "none", {"failed"}),
        one("build returns None", "returns_none", "none", {"failed"}),
        # Workloads that leave things behind or change the process.
        one("leftover non-daemon thread", "thread", "none", {"ok"}),
        one("leftover child process holding stdout", "grandchild", "none", {"ok"}),
        one("chdir('/') in build", "chdir", "none", {"ok"}),
        one("closes its stdout", "close_stdout", "none", {"ok"}, check_rc=False),
    ]
    broken = {
        "module with a syntax error": "def build(params)\n    return None\n",
        "module raising at import": "raise RuntimeError('import-time failure')\n",
        "module calling sys.exit at import": "import sys\nsys.exit(4)\n",
    }
    for name, text in broken.items():
        cases.append(FaultCase(name, {}, {"failed"}, workload="broken:build", module=text))
    overflow = [
        ("seed 2**63", {"seed": 2**63}), ("num_threads 1000000", {"num_threads": 1_000_000}),
        ("batch_size 2**40 (mlp)", {"batch_size": 2**40}),
    ]
    for name, fixed in overflow:
        cases.append(FaultCase(f"column overflow: {name}", fixed, {"failed", "oom"}, workload="mlp",
                               refusable=True))
    return cases


def _spec(case: FaultCase) -> str:
    fixed = {"iterations": 3, "warmup": 1, "count_flops": False, **case.fixed}
    if case.workload == "mlp":
        fixed.update(depth=1, width=8, input_dim=8)
    body = ", ".join(f"{k}: {_yaml(v)}" for k, v in fixed.items())
    return f"name: fault\nfixed: {{{body}}}\ngrid: {{workload: ['{case.workload}']}}\n"


def _yaml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f"'{v}'"
    return str(v)


def _rows(store: Path) -> tuple[list[dict], str | None]:
    """The store's trials rows (hidden files skipped), or why they could not be read."""
    rows = []
    for path in sorted((store / "trials").glob("*/*.parquet")):
        if path.name.startswith((".", "_")):
            continue
        try:
            rows += pq.read_table(path, columns=["status", "error"]).to_pylist()
        except Exception as exc:  # an unreadable file is itself a finding
            return rows, f"unreadable {path.name}: {type(exc).__name__}"
    return rows, None


def classify(case: FaultCase, proc: Proc, rows: list[dict], problem: str | None) -> tuple[str, str]:
    """(outcome, detail)."""
    err = proc.first_err()
    if proc.timed_out:
        return "hang", f"still running after {proc.seconds:.0f}s; rows: {len(rows)}; {err}"
    if proc.traceback:
        return "traceback", err
    if problem:
        return "wrong row", problem
    if not rows:
        if case.refusable and proc.clean_refusal:
            return "refused cleanly", err
        if case.unavoidable:
            return "no row (unavoidable)", f"exit {proc.rc}; {err}"
        if proc.memory_death:
            return "killed for memory", f"exit {proc.rc}; {err}"
        return "no row", f"exit {proc.rc}; {err}"
    if len(rows) > 1:
        return "wrong row", f"{len(rows)} rows"
    status, error = rows[0]["status"], rows[0]["error"]
    shown = f"status {status}, exit {proc.rc}, error {(error or '')[:80]!r}"
    if case.nonfinite and status == "ok":
        return "NaN/Inf stored as ok", shown
    if status not in case.statuses:
        return "wrong row", f"{shown}; expected {'/'.join(sorted(case.statuses))}"
    if status != "ok" and not error:
        return "wrong row", f"{shown}; no error text"
    if case.check_rc and proc.rc != (0 if status in ("ok", "oom") else 1):
        return "wrong row", f"{shown}; exit code disagrees with the status"
    return "correct row", shown


def run(ctx: Context) -> list[Result]:
    def one(case: FaultCase) -> Result:
        d = ctx.scratch("fault")
        shutil.copyfile(FIXTURE, d / "faulty.py")
        if case.module is not None:
            (d / "broken.py").write_text(case.module)
        (d / "spec.yaml").write_text(_spec(case))
        proc = ctx.cli.run(["trial", "spec.yaml", "--index", "0", "--store", str(d / "store")], d,
                           max(ctx.timeout, TRIAL_TIMEOUT), ctx.mem_limit)
        rows, problem = _rows(d / "store")
        outcome, detail = classify(case, proc, rows, problem)
        return Result("faults", case.name, outcome, detail, proc.seconds, {"rc": proc.rc})

    return pmap(ctx, one, build_cases(), lambda c: Result("faults", c.name, "skipped", "time budget spent"))
