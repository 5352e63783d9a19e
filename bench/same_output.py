"""Behaviour unchanged: the same store read by two versions of stepscope prints the same bytes.

Builds a small store with three sweeps (the quickstart twice, a `repeats: 4` sweep), then
records what every reader prints from it (each named query in every format, compare in
several forms, the report's HTML, `sql`, `store check`): stdout, stderr and the exit code of
each command, one file per command. Two such snapshots, one made by the old code and one by
the new, are compared file by file.

    # with the old checkout first on the path (e.g. `git worktree add /tmp/base main`):
    PYTHONPATH=/tmp/base/src python bench/same_output.py build /tmp/ss-base/store
    PYTHONPATH=/tmp/base/src python bench/same_output.py snapshot /tmp/ss-base/store /tmp/ss-base/old
    python bench/same_output.py snapshot /tmp/ss-base/store /tmp/ss-base/new
    python bench/same_output.py diff /tmp/ss-base/old /tmp/ss-base/new

`diff` prints one line per command whose output differs (and a unified diff of its first
lines), then a count; it exits 1 when any differs. Commands whose output is expected to differ
are named with `--expect NAME` (repeatable), so an intended change is said, not hidden.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import io
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ("table", "csv", "json", "markdown")

REPEATS_SPEC = """\
name: repeated
description: four repeats a side, so compare uses trials as samples
fixed:
  iterations: 12
  warmup: 2
  optimizer: adamw
  workload: mlp
grid:
  batch_size: [8, 32]
  precision: [fp32, bf16]
repeats: 4
isolation: process
"""


def stepscope(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    env.pop("STEPSCOPE_STORE", None)
    proc = subprocess.run([sys.executable, "-m", "stepscope", *args], capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise SystemExit(f"stepscope {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def build(store: str) -> None:
    """Three sweeps, each trial run in this process (`stepscope trial`, no Ray)."""
    quick = str(ROOT / "examples" / "quickstart.yaml")
    count = int(stepscope("plan", quick).stdout.split(":")[1].split()[0])
    for sweep in ("0000000000000001", "0000000000000002"):
        for index in range(count):
            stepscope("trial", quick, "--index", str(index), "--store", store, "--sweep-id", sweep)
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "repeated.yaml"
        spec.write_text(REPEATS_SPEC)
        count = int(stepscope("plan", str(spec)).stdout.split(":")[1].split()[0])
        for index in range(count):
            stepscope("trial", str(spec), "--index", str(index), "--store", store, "--sweep-id", "0000000000000003")


def commands(store: str, out: Path) -> dict[str, list[str]]:
    """Every reader's output worth pinning: name -> stepscope arguments."""
    s = ["--store", store]
    listed = stepscope("query", "--list", *s, "--format", "csv").stdout
    names = [row["query"] for row in csv.DictReader(io.StringIO(listed))]
    cmds: dict[str, list[str]] = {"query--list": ["query", "--list", *s]}
    for name in names:
        for fmt in FORMATS:
            cmds[f"query-{name}-{fmt}"] = ["query", name, *s, "--format", fmt]
        cmds[f"query-{name}-all-csv"] = ["query", name, *s, "-p", "sweep=all", "--format", "csv"]
        cmds[f"query-{name}-first-csv"] = ["query", name, *s, "-p", "sweep=0000000000000001", "--format", "csv"]
    for fmt in FORMATS:
        cmds[f"compare-precision-all-{fmt}"] = ["compare", "--by", "precision", "--sweep", "all", *s, "--format", fmt]
    cmds["compare-precision-repeated"] = ["compare", "--by", "precision", "--sweep", "0000000000000003", *s]
    cmds["compare-batch-metrics"] = ["compare", "--by", "batch_size", "--sweep", "all", "--metric", "step_ms",
                                     "--metric", "samples_per_s", *s, "--format", "csv", "--show", "rows"]
    cmds["compare-sweep-all"] = ["compare", "--by", "sweep", "--sweep", "all", *s]
    cmds["compare-sweep-gate"] = ["compare", "--by", "sweep", "--baseline", "0000000000000001", "--sweep",
                                  "0000000000000002", "--fail-on", "slower", *s]
    cmds["compare-sweep-gate-json"] = ["compare", "--by", "sweep", "--baseline", "0000000000000001", "--sweep",
                                       "0000000000000002", *s, "--format", "json"]
    cmds["compare-precision-default"] = ["compare", "--by", "precision", *s]
    cmds["compare-bad-axis"] = ["compare", "--by", "nosuch", *s]
    cmds["report-all"] = ["report", "--out", str(out / "report-all.html"), "--sweep", "all", *s]
    cmds["report-repeated"] = ["report", "--out", str(out / "report-repeated.html"), "--sweep", "0000000000000003",
                               "--by", "precision", *s]
    cmds["report-default"] = ["report", "--out", str(out / "report-default.html"), *s]
    cmds["sql"] = ["sql", "select workload, batch_size, precision, count(*) as n from trials group by all order by all",
                   *s, "--format", "csv"]
    cmds["store-check"] = ["store", "check", *s]
    cmds["compact-dry-run"] = ["compact", "--dry-run", *s]
    return cmds


def snapshot(store: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, args in commands(store, out).items():
        proc = stepscope(*args, check=False)
        text = f"exit {proc.returncode}\n--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
        # The report's own path is the one thing that differs between two snapshots' folders.
        (out / f"{name}.txt").write_text(text.replace(str(out), "<OUT>"))
    print(f"{len(list(out.glob('*.txt')))} outputs in {out}")


def diff(old: Path, new: Path, expect: set[str]) -> int:
    names = sorted({p.name for p in old.iterdir()} | {p.name for p in new.iterdir()})
    changed, expected = [], []
    for name in names:
        a, b = old / name, new / name
        if a.exists() and b.exists() and a.read_bytes() == b.read_bytes():
            continue
        stem = name.rsplit(".", 1)[0]
        (expected if stem in expect else changed).append(name)
        if stem in expect:
            continue
        print(f"DIFFERS: {name}")
        la = a.read_text().splitlines() if a.exists() else ["<missing>"]
        lb = b.read_text().splitlines() if b.exists() else ["<missing>"]
        print(textwrap.indent("\n".join(list(difflib.unified_diff(la, lb, lineterm="", n=1))[:30]), "    "))
    print(json.dumps({"compared": len(names), "identical": len(names) - len(changed) - len(expected),
                      "differ": len(changed), "differ_as_expected": expected}))
    return 1 if changed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build").add_argument("store")
    snap = sub.add_parser("snapshot")
    snap.add_argument("store")
    snap.add_argument("out", type=Path)
    d = sub.add_parser("diff")
    d.add_argument("old", type=Path)
    d.add_argument("new", type=Path)
    d.add_argument("--expect", action="append", default=[], metavar="NAME")
    args = parser.parse_args()
    if args.cmd == "build":
        build(args.store)
        return 0
    if args.cmd == "snapshot":
        snapshot(args.store, args.out)
        return 0
    return diff(args.old, args.new, set(args.expect))


if __name__ == "__main__":
    sys.exit(main())
