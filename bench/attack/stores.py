"""Category `stores`: damaged copies of a store, four queries each.

A base store is made once with the real CLI (`stepscope trial`: two trials of one sweep and
one of another, tiny mlp workloads). Each case copies it, damages the copy in one way, and
runs four queries against it:

    stepscope sql "select count(*) from trials" --format csv
    stepscope sql "select count(*) from steps" --format csv
    stepscope query trials -p sweep=all --format csv
    stepscope query phase_shares -p sweep=all --format csv

The right answer is the undamaged store's: none of the damage is a real new trial (hidden
and temporary files, stray copies of a trial under another name or in another sweep's
partition, files of the wrong table, broken or foreign files, odd store paths). Where the
damage replaces a real file with a broken one, the trial it held is gone, and the best a
reader can do is skip the file and say so.

Classes, per query, then per store (the worst of its four):

- `harmless`: exit 0 with exactly the undamaged store's answer;
- `warning, skipped file`: exit 0, a stderr line naming the damaged file, and the answer of
  the store without that file (for an added file that is also the undamaged answer);
- `clean exit 2`: refused, one `Error:` line, no traceback;
- `different, warned`: exit 0 with another answer and something on stderr;
- `silently different`: exit 0 with another answer and nothing on stderr;
- `unexpected` (exit 1, "Error: unexpected"), `traceback`, `hang`, `killed for memory`, `other`.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from harness import Context, Proc, Result, pmap

TITLE = "damaged copies of a store, 4 queries each"
CLASSES = ["harmless", "warning, skipped file", "clean exit 2", "different, warned", "silently different",
           "unexpected", "traceback", "hang", "killed for memory", "other", "skipped"]
GOOD = {"harmless", "warning, skipped file"}
_SEVERITY = {c: i for i, c in enumerate(CLASSES)}

QUERIES = [
    ("count trials", ["sql", "select count(*) from trials", "--format", "csv"]),
    ("count steps", ["sql", "select count(*) from steps", "--format", "csv"]),
    ("query trials", ["query", "trials", "-p", "sweep=all", "--format", "csv"]),
    ("query phase_shares", ["query", "phase_shares", "-p", "sweep=all", "--format", "csv"]),
]

SPEC_A = ("name: base\nfixed: {iterations: 3, warmup: 1, count_flops: false, depth: 1, width: 16, input_dim: 16}\n"
          "grid: {workload: [mlp], batch_size: [2, 4]}\n")
SPEC_B = ("name: other\nfixed: {iterations: 3, warmup: 1, count_flops: false, depth: 1, width: 16, input_dim: 16}\n"
          "grid: {workload: [mlp], batch_size: [8]}\n")


@dataclass
class Base:
    """The undamaged store: where it is and where its files are."""

    store: Path
    sweep_a: str
    sweep_b: str
    trials_a: list[Path]  # trials files of sweep A
    steps_a: list[Path]
    devices_a: list[Path]
    sweep_file_a: Path
    trials_b: list[Path]

    def rel(self, path: Path) -> Path:
        return path.relative_to(self.store)


#: A damage: (copied store, base) -> (store path to query, damaged files inside it).
Damage = Callable[[Path, Base], tuple[Path, list[Path]]]


def build_base(ctx: Context) -> Base | str:
    """Make the base store with `stepscope trial`; a string says why it could not."""
    d = ctx.root / "base"
    d.mkdir()
    (d / "a.yaml").write_text(SPEC_A)
    (d / "b.yaml").write_text(SPEC_B)
    for spec, index in (("a.yaml", 0), ("a.yaml", 1), ("b.yaml", 0)):
        p = ctx.cli.run(["trial", spec, "--index", str(index), "--store", "store"], d, 180)
        if p.rc != 0:
            return f"`stepscope trial {spec} --index {index}` exit {p.rc}: {p.first_err()}"
    store = d / "store"

    def files(table: str, name: str) -> list[Path]:
        return sorted(p for p in (store / table).glob(f"sweep_id={name}-*/*.parquet"))

    sweeps = {p.parent.name.removeprefix("sweep_id=") for p in (store / "sweeps").glob("*/*.parquet")}
    a = next((s for s in sweeps if s.startswith("base-")), None)
    b = next((s for s in sweeps if s.startswith("other-")), None)
    if not a or not b or len(files("trials", "base")) != 2:
        return f"unexpected base store layout: {sorted(sweeps)}"
    return Base(store, a, b, files("trials", "base"), files("steps", "base"), files("devices", "base"),
                next((store / "sweeps" / f"sweep_id={a}").glob("*.parquet")), files("trials", "other"))


# ------------------------------------------------------------------ damage helpers


def _copy_as(src: Path, dst: Path) -> list[Path]:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return [dst]


def _write_table(table: pa.Table, dst: Path) -> list[Path]:
    dst.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, dst)
    return [dst]


def _bytes(dst: Path, data: bytes) -> list[Path]:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data)
    return [dst]


def _rng(name: str) -> random.Random:
    return random.Random(f"stores:{name}")


def _with_column(src: Path | pa.Table, name: str, values: pa.Array | list) -> pa.Table:
    """`src` (a Parquet file or a table) with column `name` replaced by `values`."""
    t = src if isinstance(src, pa.Table) else pq.read_table(src)
    i = t.schema.get_field_index(name)
    return t.set_column(i, name, pa.array(values) if isinstance(values, list) else values)


def _truncate(path: Path, keep: float) -> list[Path]:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return [path]


def _flip(path: Path, start: float, count: int, seed: str) -> list[Path]:
    data = bytearray(path.read_bytes())
    rng = _rng(seed)
    lo = int(len(data) * start)
    for _ in range(count):
        i = rng.randrange(lo, min(len(data), lo + 256))
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return [path]


def _moved_store(store: Path, new_name: str) -> tuple[Path, list[Path]]:
    target = store.parent / new_name
    store.rename(target)
    return target, []


def _damages() -> list[tuple[str, Damage]]:
    """Every damage, by name. Each gets a fresh copy of the base store."""
    T = lambda s, b, k=0: s / b.rel(b.trials_a[k])  # noqa: E731  (the copy's trials file k of sweep A)
    S = lambda s, b, k=0: s / b.rel(b.steps_a[k])  # noqa: E731
    D = lambda s, b, k=0: s / b.rel(b.devices_a[k])  # noqa: E731
    part = lambda s, b, table="trials", sweep=None: s / table / f"sweep_id={sweep or b.sweep_a}"  # noqa: E731
    stem = lambda b, k=0: b.trials_a[k].stem  # noqa: E731

    return [
        # -- hidden and temporary files: never data
        ("macOS ._x.parquet in trials", lambda s, b: (s, _bytes(part(s, b) / f"._{stem(b)}.parquet",
                                                                 b"\x00\x05\x16\x07" + _rng("ad").randbytes(4092)))),
        ("macOS ._x.parquet in steps", lambda s, b: (s, _bytes(part(s, b, "steps") / f"._{stem(b)}.parquet",
                                                                b"\x00\x05\x16\x07" + _rng("ad2").randbytes(4092)))),
        (".partial.parquet copy of a trial", lambda s, b: (s, _copy_as(T(s, b), part(s, b) / ".partial.parquet"))),
        ("writer temp file left (.x.parquet.<hex>.tmp)", lambda s, b: (s, _bytes(
            part(s, b) / f".{stem(b)}.parquet.{'ab' * 16}.tmp", T(s, b).read_bytes()[:300]))),
        ("_x.parquet copy (underscore)", lambda s, b: (s, _copy_as(T(s, b), part(s, b) / f"_{stem(b)}.parquet"))),
        (".DS_Store in partition", lambda s, b: (s, _bytes(part(s, b) / ".DS_Store", b"\x00\x00\x00\x01Bud1" + b"\x00" * 100))),
        ("editor backup x.parquet~", lambda s, b: (s, _copy_as(T(s, b), part(s, b) / f"{stem(b)}.parquet~"))),
        ("x.parquet.bak copy", lambda s, b: (s, _copy_as(T(s, b), part(s, b) / f"{stem(b)}.parquet.bak"))),
        # -- copies and misplaced files
        ("trial copied under another name", lambda s, b: (s, _copy_as(T(s, b), part(s, b) / "copy.parquet"))),
        ("trial copied into another sweep's partition", lambda s, b: (s, _copy_as(T(s, b), part(s, b, sweep=b.sweep_b) / T(s, b).name))),
        ("trial moved into another sweep's partition", lambda s, b: (s, _moved(T(s, b), part(s, b, sweep=b.sweep_b) / T(s, b).name))),
        ("steps file dropped into trials/", lambda s, b: (s, _copy_as(S(s, b), part(s, b) / "steps-copy.parquet"))),
        ("trials file dropped into steps/", lambda s, b: (s, _copy_as(T(s, b), part(s, b, "steps") / "trial-copy.parquet"))),
        ("devices file dropped into sweeps/", lambda s, b: (s, _copy_as(D(s, b), part(s, b, "sweeps") / "dev.parquet"))),
        ("sweeps file copied under another name", lambda s, b: (s, _copy_as(s / b.rel(b.sweep_file_a), part(s, b, "sweeps") / "sweep-copy.parquet"))),
        ("trial copied into a non-hive directory", lambda s, b: (s, _copy_as(T(s, b), s / "trials" / "junk" / "x.parquet"))),
        ("trial copied at table level", lambda s, b: (s, _copy_as(T(s, b), s / "trials" / "x.parquet"))),
        ("trial copied as .PARQUET", lambda s, b: (s, _copy_as(T(s, b), part(s, b) / "copy.PARQUET"))),
        ("directory named x.parquet", lambda s, b: (s, _mkdir(part(s, b) / "dir.parquet"))),
        ("orphan steps file (no trials row)", lambda s, b: (s, _copy_as(S(s, b), part(s, b, "steps") / "0000000000000000.parquet"))),
        ("orphan devices file", lambda s, b: (s, _copy_as(D(s, b), part(s, b, "devices") / "0000000000000000.parquet"))),
        ("conflicting duplicate (same trial, status failed)", lambda s, b: (s, _write_table(
            _with_column(T(s, b), "status", ["failed"]), part(s, b) / "dup.parquet"))),
        # -- schema damage
        ("new file missing required columns", lambda s, b: (s, _write_table(
            pq.read_table(T(s, b)).select(["sweep_id", "trial_id", "status"]), part(s, b) / "ffffffffffffffff.parquet"))),
        ("wrong column type, replacing a trial", lambda s, b: (s, _write_table(
            _with_column(T(s, b), "batch_size", ["sixteen"]), T(s, b)))),
        ("wrong column type, new trial file", lambda s, b: (s, _write_table(
            _with_column(_with_column(T(s, b), "batch_size", ["sixteen"]), "trial_id", ["eeeeeeeeeeeeeeee"]),
            part(s, b) / "eeeeeeeeeeeeeeee.parquet"))),
        ("status as a struct column", lambda s, b: (s, _write_table(
            _with_column(T(s, b), "status", pa.array([{"a": 1}])), T(s, b)))),
        ("null trial_id in a new file", lambda s, b: (s, _write_table(
            _with_column(T(s, b), "trial_id", pa.array([None], pa.string())), part(s, b) / "dddddddddddddddd.parquet"))),
        ("extra unknown columns (same data)", lambda s, b: (s, _write_table(
            pq.read_table(T(s, b)).append_column("zzz_extra", pa.array([1.5])), T(s, b)) and [])),
        ("older schema: optional column missing", lambda s, b: (s, _write_table(
            pq.read_table(T(s, b)).drop_columns(["flops_uncounted", "nvml_memory_scope"]), T(s, b)) and [])),
        ("steps duration_ms as strings", lambda s, b: (s, _write_table(
            _with_column(S(s, b), "duration_ms", [str(x) for x in pq.read_table(S(s, b))["duration_ms"].to_pylist()]),
            S(s, b)))),
        ("empty Parquet file (schema, no rows)", lambda s, b: (s, _write_table(
            pq.read_table(T(s, b)).slice(0, 0), part(s, b) / "cccccccccccccccc.parquet") and [])),
        # -- byte damage
        ("zero-byte new trials file", lambda s, b: (s, _bytes(part(s, b) / "bbbbbbbbbbbbbbbb.parquet", b""))),
        ("zero-byte replacing a trials file", lambda s, b: (s, _bytes(T(s, b), b""))),
        ("truncated trials file", lambda s, b: (s, _truncate(T(s, b), 0.5))),
        ("truncated steps file", lambda s, b: (s, _truncate(S(s, b), 0.6))),
        ("random bytes .parquet in trials", lambda s, b: (s, _bytes(part(s, b) / "r1.parquet", _rng("r1").randbytes(3000)))),
        ("random bytes .parquet in steps", lambda s, b: (s, _bytes(part(s, b, "steps") / "r2.parquet", _rng("r2").randbytes(3000)))),
        ("random bytes .parquet in sweeps", lambda s, b: (s, _bytes(part(s, b, "sweeps") / "r3.parquet", _rng("r3").randbytes(3000)))),
        ("random bytes .parquet in devices", lambda s, b: (s, _bytes(part(s, b, "devices") / "r4.parquet", _rng("r4").randbytes(3000)))),
        ("PAR1 magic around random bytes", lambda s, b: (s, _bytes(part(s, b) / "r5.parquet", b"PAR1" + _rng("r5").randbytes(2000) + b"PAR1"))),
        ("corrupted footer of a trials file", lambda s, b: (s, _flip(T(s, b), 0.97, 6, "footer"))),
        ("flipped bytes inside a steps file", lambda s, b: (s, _flip(S(s, b), 0.3, 8, "middle"))),
        # -- odd paths and odd directory entries
        ("store path containing [", lambda s, b: _moved_store(s, "store[1]")),
        ("store path containing * and ?", lambda s, b: _moved_store(s, "st*re?")),
        ("store path containing ' and a space", lambda s, b: _moved_store(s, "it's a store")),
        ("store path containing {a,b}", lambda s, b: _moved_store(s, "store{a,b}")),
        ("trials table dir is a regular file", lambda s, b: (s, _replace_dir_with_file(s / "trials"))),
        ("dangling symlink x.parquet", lambda s, b: (s, _symlink(part(s, b) / "dangling.parquet", s / "nowhere"))),
        ("symlink loop x.parquet", lambda s, b: (s, _symlink(part(s, b) / "loop.parquet", part(s, b) / "loop.parquet"))),
        ("symlink to /etc/passwd as x.parquet", lambda s, b: (s, _symlink(part(s, b) / "passwd.parquet", Path("/etc/passwd")))),
        ("FIFO named x.parquet", lambda s, b: (s, _fifo(part(s, b) / "fifo.parquet"))),
    ]


def _moved(src: Path, dst: Path) -> list[Path]:
    dst.parent.mkdir(parents=True, exist_ok=True)
    src.rename(dst)
    return [dst]


def _mkdir(path: Path) -> list[Path]:
    path.mkdir(parents=True)
    return [path]


def _symlink(path: Path, target: Path) -> list[Path]:
    path.symlink_to(target)
    return [path]


def _fifo(path: Path) -> list[Path]:
    os.mkfifo(path)
    return [path]


def _replace_dir_with_file(path: Path) -> list[Path]:
    shutil.rmtree(path)
    path.write_text("not a directory\n")
    return [path]


# ------------------------------------------------------------------ running and judging


def _answers(ctx: Context, store: Path) -> list[Proc]:
    return [ctx.cli.run([*args, "--store", str(store)], store.parent, ctx.timeout, ctx.mem_limit) for _, args in QUERIES]


def _names(stderr: str, damaged: list[Path]) -> bool:
    return any(p.name in stderr for p in damaged)


def _judge(proc: Proc, right: str, without: Callable[[], str | None], damaged: list[Path]) -> str:
    base = proc.base_class()
    if base:
        return base
    if proc.clean_refusal:
        return "clean exit 2"
    if proc.rc != 0:
        return "other"
    warned = bool(proc.stderr.strip())
    if proc.stdout == right:
        return "warning, skipped file" if warned and _names(proc.stderr, damaged) else "harmless"
    if warned and _names(proc.stderr, damaged) and proc.stdout == without():
        return "warning, skipped file"
    return "different, warned" if warned else "silently different"


def run(ctx: Context) -> list[Result]:
    base = build_base(ctx)
    if isinstance(base, str):
        return [Result("stores", "base store", "harness error", base)]
    right = _answers(ctx, _fresh_copy(ctx, base, "reference"))
    if any(p.rc != 0 for p in right):
        bad = next(p for p in right if p.rc != 0)
        return [Result("stores", "base store", "harness error", f"undamaged store: exit {bad.rc}: {bad.first_err()}")]

    def one(item: tuple[str, Damage]) -> Result:
        name, damage = item
        store = _fresh_copy(ctx, base, name)
        store, damaged = damage(store, base)
        procs = _answers(ctx, store)
        cache: dict[str, list[str | None]] = {}

        def without(i: int) -> str | None:
            if "w" not in cache:  # the right answers once the damaged files are gone
                inside = [p for p in damaged if _inside(p, store)]
                if not inside:
                    cache["w"] = [r.stdout for r in right]
                else:
                    copy = ctx.scratch("without") / "store"
                    skip = {os.fspath(p) for p in inside}
                    shutil.copytree(store, copy, symlinks=True,
                                    ignore=lambda d, names: [n for n in names if os.path.join(d, n) in skip])
                    cache["w"] = [q.stdout if q.rc == 0 else None for q in _answers(ctx, copy)]
            return cache["w"][i]

        outcomes = [_judge(p, r.stdout, lambda i=i: without(i), damaged) for i, (p, r) in enumerate(zip(procs, right, strict=True))]
        worst = max(range(4), key=lambda i: _SEVERITY.get(outcomes[i], 99))
        per_query = ", ".join(f"{q}: {o}" for (q, _), o in zip(QUERIES, outcomes, strict=True))
        detail = f"{per_query}; {QUERIES[worst][0]}: {procs[worst].first_err() if procs[worst].stderr.strip() else 'no stderr'}"
        return Result("stores", name, outcomes[worst], detail, sum(p.seconds for p in procs),
                      {"queries": dict(zip((q for q, _ in QUERIES), outcomes, strict=True))})

    return pmap(ctx, one, _damages(), lambda it: Result("stores", it[0], "skipped", "time budget spent"))


def _fresh_copy(ctx: Context, base: Base, name: str) -> Path:
    dst = ctx.scratch(name) / "store"
    shutil.copytree(base.store, dst, symlinks=True)
    return dst


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False

