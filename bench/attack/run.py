"""Attack harness: throw malformed input, damaged stores, faulty workloads, kills and hostile
SQL at the real `stepscope` CLI, and count how each attack ends.

Run it (from the repository root, in the project's venv):

    python bench/attack/run.py                       # every category, ~9 minutes on 2 cores
    python bench/attack/run.py --only specs,sql      # some categories
    python bench/attack/run.py --only kills --verbose --keep   # see each case; keep the scratch dir
    python bench/attack/run.py --json out.json       # also every result as JSON

Everything happens in a fresh temporary directory (removed at the end unless `--keep`), with
`--store` always pointing inside it: the user's stores and `STEPSCOPE_STORE` are never read
or written. Every case is a subprocess of the venv's `stepscope` entry point, in its own
process group, with a timeout (`--timeout`) and an address-space limit (`--mem-gb`). Case
generation is seeded (`--seed`), so two runs try the same cases. Each category has a time
budget (`--budget`, seconds); cases not started within it are reported as `skipped`.

Categories and their outcome classes (each module's docstring says more):

- `specs` (specs.py, ~500 cases): `stepscope plan SPEC` on malformed or odd specs.
  clean exit 2 | accepted (valid) | wrongly accepted | wrongly refused | traceback | hang |
  killed for memory | unexpected (the CLI's "Error: unexpected ..." exit 1) | other.
- `stores` (stores.py, 51 damaged stores, 4 queries each): the store's answers against the
  undamaged store's. harmless | warning, skipped file | clean exit 2 | silently different |
  unexpected | traceback | hang | killed for memory. A store's outcome is its worst query's.
- `faults` (faults.py, 47 faulty workloads): `stepscope trial` when the workload fails.
  correct row | no row (unavoidable) | NaN/Inf stored as ok | wrong row | no row | traceback |
  hang.
- `kills` (kills.py, 40 trials): SIGKILL of `stepscope trial` at varied moments, most of them
  while it writes. clean | temp files left | orphan files left | partial visible; plus how many
  temp files `stepscope store clean` leaves, when that command exists.
- `sql` (sqlcases.py, 53 statements): `stepscope sql` as a read-only window. clean refusal |
  ran (legitimate) | wrongly allowed | wrongly refused | unexpected | traceback | hang |
  killed for memory.

The report is Markdown: a header (time, `git rev-parse HEAD`, how many paths
`git status --short` lists), a table `attack | tried | outcome counts`, then every case that
did not end in a good class, with the first line of its stderr. This is a diagnostic tool,
not a test: it is not collected by pytest and always exits 0 unless the harness itself fails.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Cli, Context, find_cli, make_writable  # noqa: E402

#: name -> (module, default time budget in seconds)
CATEGORIES = {
    "specs": ("specs", 200),
    "stores": ("stores", 140),
    "faults": ("faults", 140),
    "kills": ("kills", 140),
    "sql": ("sqlcases", 90),
}


def _git(*args: str) -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _header(cli: str, elapsed: dict[str, float]) -> str:
    head = _git("rev-parse", "HEAD").strip() or "?"
    dirty = len([ln for ln in _git("status", "--short").splitlines() if ln.strip()])
    version = subprocess.run([cli, "--version"], capture_output=True, text=True).stdout.strip()
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    times = ", ".join(f"{k} {v:.0f}s" for k, v in elapsed.items())
    return (f"Measured {when}; HEAD {head}; `git status --short`: {dirty} paths; {version}; "
            f"Python {platform.python_version()}, {os.cpu_count()} CPUs; time: {times}.")


def report(results: dict[str, list], modules: dict, header: str) -> str:
    lines = [header, "", "| attack | tried | outcome counts |", "| --- | --- | --- |"]
    for name, rs in results.items():
        mod = modules[name]
        counts = Counter(r.outcome for r in rs)
        order = [c for c in mod.CLASSES if counts.get(c) or c not in ("skipped", "other")]
        order += sorted(c for c in counts if c not in order)
        shown = ", ".join(f"{counts.get(c, 0)} {c}" for c in order)
        extra = mod.summary(rs) if hasattr(mod, "summary") else ""
        tried = sum(1 for r in rs if r.outcome != "skipped")
        lines.append(f"| {mod.TITLE} | {tried} | {shown}{'; ' + extra if extra else ''} |")
    lines += ["", "Cases that did not end well (category, case, outcome, first line of stderr):", ""]
    for name, rs in results.items():
        bad = [r for r in rs if r.outcome not in modules[name].GOOD]
        classes = modules[name].CLASSES
        for r in sorted(bad, key=lambda r: classes.index(r.outcome) if r.outcome in classes else len(classes)):
            detail = r.detail.replace("|", "\\|").replace("\n", " ")
            lines.append(f"- [{name}] {r.name}: **{r.outcome}**: {detail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(CATEGORIES),
                    help=f"comma-separated categories (default: all): {', '.join(CATEGORIES)}")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="cases run at once (default: CPUs)")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per child before it counts as a hang")
    ap.add_argument("--mem-gb", type=float, default=3.0, help="address-space limit per child (RLIMIT_AS), GB")
    ap.add_argument("--seed", type=int, default=20240601, help="seed of the generated cases")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds per category before remaining cases are skipped (default: per category)")
    ap.add_argument("--stepscope", default=None, help="the stepscope entry point (default: the venv's)")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write every result as JSON")
    ap.add_argument("--out", default=None, metavar="FILE", help="also write the Markdown report to FILE")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--verbose", "-v", action="store_true", help="print each case as it ends")
    args = ap.parse_args(argv)

    chosen = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in CATEGORIES]
    if unknown:
        ap.error(f"unknown categories {unknown}; choose from {', '.join(CATEGORIES)}")
    exe = find_cli(args.stepscope)
    root = Path(tempfile.mkdtemp(prefix="stepscope-attack-"))
    cli = Cli(exe, root)
    modules, results, elapsed = {}, {}, {}
    try:
        for name in chosen:
            mod = importlib.import_module(CATEGORIES[name][0])
            modules[name] = mod
            budget = args.budget if args.budget is not None else CATEGORIES[name][1]
            croot = root / name
            croot.mkdir()
            ctx = Context(cli=cli, root=croot, jobs=args.jobs, timeout=args.timeout,
                          mem_limit=int(args.mem_gb * (1 << 30)), seed=args.seed,
                          deadline=time.monotonic() + budget, verbose=args.verbose)
            print(f"attack: {name} ...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            results[name] = mod.run(ctx)
            elapsed[name] = time.monotonic() - t0
            print(f"attack: {name}: {len(results[name])} cases in {elapsed[name]:.0f}s", file=sys.stderr, flush=True)
            if not args.keep:
                make_writable(croot)
                shutil.rmtree(croot, ignore_errors=True)
    finally:
        if args.keep:
            print(f"attack: scratch kept in {root}", file=sys.stderr)
        else:
            make_writable(root)
            shutil.rmtree(root, ignore_errors=True)
    text = report(results, modules, _header(exe, elapsed))
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {k: [vars(r) for r in rs] for k, rs in results.items()}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
