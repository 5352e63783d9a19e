"""Category `kills`: SIGKILL of `stepscope trial` at varied moments, most while it writes.

A tiny trial (mlp, 1 warmup + 3 measured steps) is first run whole, to learn how long it
takes and when its first `steps` file appears. Then 40 trials, each into a store of its own,
are killed (SIGKILL to the process group) at:

- 10 moments spread over the run (30% to 105% of the time its first `steps` file appeared);
- 25 moments 0 to 40 ms after an entry (temporary or final) first appears under `steps/`:
  the steps, devices and trials files are written then;
- 5 moments 0 to 4 ms after an entry first appears under `sweeps/`.

Then the store is inspected directly (pyarrow) and through the CLI:

- `partial visible`: a visible `.parquet` file that does not read, a `trials` row whose steps
  file is missing or empty, or `stepscope sql` counting rows other than the committed ones;
- `query failed`: `stepscope sql` over the store did not exit 0;
- `orphan files left`: `steps`/`devices` files without their `trials` file (the views hide
  them: not wrong, but left over);
- `temp files left`: hidden temporary files (`.*.tmp`) left under the store;
- `clean`: none of these (the kill landed before any write, or after the last);
- `completed before kill`: the trial had already exited.

The summary adds how many temp files were left in all, and how many `stepscope store clean`
(when `stepscope --help` lists a `store` group with `clean`) leaves behind.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from harness import Context, Result, kill_group, pmap, wait

TITLE = "SIGKILL of a trial while writing"
CLASSES = ["clean", "completed before kill", "temp files left", "orphan files left", "query failed",
           "partial visible", "skipped"]
GOOD = {"clean", "completed before kill"}

SPEC = ("name: kill\nfixed: {iterations: 3, warmup: 1, count_flops: false, depth: 1, width: 8, input_dim: 8}\n"
        "grid: {workload: [mlp], batch_size: [2]}\n")
TABLES = ("sweeps", "trials", "steps", "devices")


@dataclass
class KillCase:
    name: str
    mode: str  # time | steps | sweeps
    delay: float  # seconds: after the start (time) or after the first entry appears


def build_cases(seed: int, t_steps: float) -> list[KillCase]:
    rng = random.Random(f"kills:{seed}")
    cases = []
    for i in range(10):
        f = 0.30 + 0.75 * i / 9
        cases.append(KillCase(f"at {f:.0%} of the time to the first steps file", "time", f * t_steps))
    for i in range(25):
        d = 0.040 * (i / 24) ** 2 + rng.uniform(0, 0.00003)
        cases.append(KillCase(f"{d * 1e3:.2f} ms after steps/ gets an entry", "steps", d))
    for i in range(5):
        d = 0.001 * i + rng.uniform(0, 0.00003)
        cases.append(KillCase(f"{d * 1e3:.2f} ms after sweeps/ gets an entry", "sweeps", d))
    return cases


def _has_entry(table_dir: Path) -> bool:
    """Any file (temporary or final) in any partition of `table_dir`."""
    try:
        with os.scandir(table_dir) as parts:
            for part in parts:
                with os.scandir(part.path) as files:
                    if any(True for _ in files):
                        return True
    except (FileNotFoundError, NotADirectoryError):
        pass
    return False


def _running(pid: int) -> bool:
    """Still running (not reaped, not waited for: WNOWAIT)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:
        return False


def _attempt(ctx: Context, d: Path, case: KillCase | None, limit: float) -> tuple[bool, float | None, float]:
    """Start a trial in `d`; kill it as `case` says (None: let it finish, noting when the
    first steps entry appears). Returns (killed, seconds to the first steps entry, total)."""
    (d / "spec.yaml").write_text(SPEC)
    store = d / "store"
    with open(d / "out.txt", "wb") as out, open(d / "err.txt", "wb") as err:
        t0 = time.monotonic()
        p = ctx.cli.start(["trial", "spec.yaml", "--index", "0", "--store", str(store)], d, ctx.mem_limit,
                          stdout=out, stderr=err)
        first = None
        watch = store / ("sweeps" if case and case.mode == "sweeps" else "steps")
        fire_at = t0 + case.delay if case and case.mode == "time" else None
        while _running(p.pid) and time.monotonic() - t0 < limit:
            now = time.monotonic()
            if first is None and _has_entry(watch):
                first = now - t0
                if case and case.mode != "time":
                    fire_at = now + case.delay
            if fire_at is not None and now >= fire_at:
                break
            time.sleep(0.0002)
        killed = _running(p.pid)
        if killed and case is not None:
            kill_group(p.pid)
        wait(p, limit)
        return killed, first, time.monotonic() - t0


def inspect(ctx: Context, store: Path, query: bool = True) -> dict:
    """What a killed trial left in `store` (`query`: also count its rows through the CLI)."""
    temps, unreadable, orphans, partial = [], [], [], []
    files: dict[str, dict[tuple[str, str], Path]] = {t: {} for t in TABLES}
    for dirpath, _, names in os.walk(store):
        for name in names:
            path = Path(dirpath) / name
            if name.startswith(".") and name.endswith(".tmp"):
                temps.append(path)
                continue
            if name.startswith((".", "_")) or not name.endswith(".parquet"):
                continue
            try:
                pq.read_metadata(path)
            except Exception:
                unreadable.append(path)
                continue
            table = path.parent.parent.name
            if table in files:
                files[table][(path.parent.name, path.stem)] = path
    for key, path in files["trials"].items():
        steps = files["steps"].get(key)
        if steps is None or pq.read_metadata(steps).num_rows == 0:
            partial.append(f"trials row without its steps ({path.name})")
    for table in ("steps", "devices"):
        orphans += [p for k, p in files[table].items() if k not in files["trials"]]
    committed_steps = sum(pq.read_metadata(files["steps"][k]).num_rows for k in files["trials"] if k in files["steps"])
    found = {"temps": temps, "unreadable": unreadable, "orphans": orphans, "partial": partial, "query_rc": 0,
             "query_err": ""}
    if query:
        q = ctx.cli.run(["sql", "select (select count(*) from trials) as t, (select count(*) from steps) as s",
                         "--format", "csv", "--store", str(store)], store.parent, ctx.timeout, ctx.mem_limit)
        counts = q.stdout.strip().splitlines()[-1] if q.rc == 0 and q.stdout.strip() else None
        if counts is not None and counts != f"{len(files['trials'])},{committed_steps}":
            partial.append(f"sql counts {counts}, committed files hold {len(files['trials'])},{committed_steps}")
        found.update(query_rc=q.rc, query_err=q.first_err() if q.rc else "")
    return found


def _clean_args(ctx: Context) -> list[str] | None:
    """`stepscope store clean` and the options it needs to remove files of any age, or None
    when this CLI has no such command."""
    top = ctx.cli.run(["--help"], ctx.root, ctx.timeout)
    if "store" not in {ln.split()[0] for ln in top.stdout.splitlines() if ln.startswith("  ") and ln.split()}:
        return None
    sub = ctx.cli.run(["store", "clean", "--help"], ctx.root, ctx.timeout)
    if sub.rc != 0:
        return None
    args = ["store", "clean"]
    for opt in ("--older-than", "--min-age", "--age"):
        if opt in sub.stdout:
            args += [opt, "0"]
            break
    for flag in ("--yes", "--force"):
        if flag in sub.stdout:
            args.append(flag)
    return args


def run(ctx: Context) -> list[Result]:
    cal = ctx.scratch("calibrate")
    _, t_steps, total = _attempt(ctx, cal, None, 120)
    if t_steps is None:
        err = (cal / "err.txt").read_text(errors="replace").strip().splitlines()
        return [Result("kills", "calibration", "harness error",
                       f"the trial wrote no steps file in {total:.0f}s: {err[-1] if err else 'no stderr'}")]
    clean = _clean_args(ctx)
    ctx.log(f"calibration: first steps entry at {t_steps:.2f}s of {total:.2f}s; store clean: {clean}")

    def one(case: KillCase) -> Result:
        d = ctx.scratch("kill")
        killed, _, seconds = _attempt(ctx, d, case, max(3 * total, 30))
        found = inspect(ctx, d / "store")
        extra = {"temps": len(found["temps"]), "orphans": len(found["orphans"])}
        if found["unreadable"] or found["partial"]:
            what = [f"unreadable {p.name}" for p in found["unreadable"]] + found["partial"]
            outcome, detail = "partial visible", "; ".join(what)
        elif found["query_rc"] != 0:
            outcome, detail = "query failed", f"exit {found['query_rc']}: {found['query_err']}"
        elif not killed:
            outcome, detail = "completed before kill", ""
        elif found["orphans"]:
            outcome, detail = "orphan files left", ", ".join(f"{p.parent.parent.name}/{p.name}" for p in found["orphans"])
        elif found["temps"]:
            outcome, detail = "temp files left", ", ".join(p.name for p in found["temps"])
        else:
            outcome, detail = "clean", ""
        if found["temps"] and outcome != "temp files left":
            detail += f"; temp files: {', '.join(p.name for p in found['temps'])}"
        if clean is not None:
            c = ctx.cli.run([*clean, "--store", str(d / "store")], d, ctx.timeout, ctx.mem_limit)
            after = inspect(ctx, d / "store", query=False)
            extra.update(clean_rc=c.rc, temps_after_clean=len(after["temps"]), orphans_after_clean=len(after["orphans"]))
            if c.rc != 0:
                extra["clean_err"] = c.first_err()
        return Result("kills", case.name, outcome, detail.strip("; "), seconds, extra)

    results = pmap(ctx, one, build_cases(ctx.seed, t_steps), lambda c: Result("kills", c.name, "skipped", "time budget spent"))
    for r in results:
        r.extra["store_clean"] = clean is not None
    return results


def summary(results: list[Result]) -> str:
    """Temp and orphan files left in all, and after `stepscope store clean`."""
    ran = [r for r in results if r.outcome not in ("skipped", "harness error")]
    temps = sum(r.extra.get("temps", 0) for r in ran)
    orphans = sum(r.extra.get("orphans", 0) for r in ran)
    text = (f"{temps} temp files left in {sum(1 for r in ran if r.extra.get('temps'))} stores, "
            f"{orphans} orphan steps/devices files")
    if ran and ran[0].extra.get("store_clean"):
        after = sum(r.extra.get("temps_after_clean", 0) for r in ran)
        orph = sum(r.extra.get("orphans_after_clean", 0) for r in ran)
        failed = sum(1 for r in ran if r.extra.get("clean_rc", 0) != 0)
        text += (f"; after `stepscope store clean`: {after} temp files, {orph} orphan files"
                 + (f" ({failed} runs of it exited non-zero)" if failed else ""))
    elif ran:
        text += "; `stepscope store clean`: not in this CLI"
    return text
