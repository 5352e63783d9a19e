"""Category `sql`: `stepscope sql` as a read-only window on the store.

A one-trial store is made with `stepscope trial`; each case gets a copy of it in a directory
of its own that also holds `outside/` (canary files: text, CSV, JSON, Parquet), a sibling
`store-evil/` whose name shares the store's prefix, and `home/` (the child's HOME). The case's
SQL runs as `stepscope sql SQL --store STORE --format csv` in that directory.

Every case says whether it should be refused (it writes, attaches, installs or loads an
extension, changes a setting, or reads a file outside the store), should run (a legitimate
query, some of them odd: a leading `--` comment, a view dropped in memory), or either (huge
results, long or deep SQL: measured, not judged). After the run the harness checks whether any
file appeared or changed under the case's directory or at a /tmp path the SQL named, and
whether the output holds a canary or a line of /etc/passwd.

Classes: `clean refusal` (exit 2, an `Error:` line, nothing written) | `ran (legitimate)` |
`wrongly allowed` (exit 0 or a file written, for SQL that should be refused; the detail says
what: wrote a file, read outside the store, changed config, or ran) | `wrongly refused` |
`unexpected` | `traceback` | `hang` | `killed for memory` (under the harness's RLIMIT_AS) |
`other`. Peak RSS of the huge queries is in the summary.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from harness import Context, Proc, Result, pmap, tree_snapshot

TITLE = "SQL through `stepscope sql`"
CLASSES = ["clean refusal", "ran (legitimate)", "wrongly allowed", "wrongly refused", "unexpected", "traceback",
           "hang", "killed for memory", "other", "skipped"]
GOOD = {"clean refusal", "ran (legitimate)"}

CANARY = "CANARY-5f3a9c"
PASSWD = "root:x:0:0"
SPEC = ("name: sqlbase\nfixed: {iterations: 2, warmup: 1, count_flops: false, depth: 1, width: 8, input_dim: 8}\n"
        "grid: {workload: [mlp], batch_size: [2]}\n")


@dataclass
class SqlCase:
    name: str
    sql: str | bytes  # {store}, {out}, {evil}, {tmp} are filled in
    expect: str  # refuse | run | either
    why: str = "ran"  # what an exit 0 means for a refused case: wrote a file | read outside | changed config | ran
    leaks: tuple[str, ...] = (CANARY, PASSWD)
    huge: bool = False  # stdout discarded, peak RSS reported
    setup: str | None = None  # symlink: <store>/link -> outside


def build_cases() -> list[SqlCase]:
    W, R, C = "wrote a file", "read outside the store", "changed config"
    refuse = [
        ("COPY TO outside", "copy (select 1) to '{out}/x.csv'", W),
        ("COPY a view to outside", "copy trials to '{out}/t.csv'", W),
        ("COPY TO a new file in the store", "copy (select 1 as a) to '{store}/trials/sweep_id=zz/evil.parquet' (format parquet)", W),
        ("COPY TO through ..", "copy (select 1) to '{store}/../outside/dotdot.csv'", W),
        ("COPY TO /tmp", "copy (select 1) to '{tmp}'", W),
        ("EXPORT DATABASE outside", "export database '{out}/exp'", W),
        ("PREPARE a COPY into the store, EXECUTE it", "prepare p as copy (select 1) to '{store}/p.csv'; execute p", W),
        ("PRAGMA profiling to a file", "pragma enable_profiling='json'; pragma profiling_output='{out}/prof.json'; select 1", W),
        ("ATTACH a new file outside", "attach '{out}/db.duckdb' as x", W),
        ("ATTACH :memory:", "attach ':memory:' as m", "ran"),
        ("CREATE PERSISTENT SECRET (writes under HOME)", "create persistent secret s (type s3, key_id 'k', secret 'v')", W),
        ("read_csv outside", "select * from read_csv('{out}/secret.csv')", R),
        ("replacement scan outside", "select * from '{out}/secret.csv'", R),
        ("read_text outside", "select * from read_text('{out}/secret.txt')", R),
        ("glob outside", "select * from glob('{out}/*')", R),
        ("glob /etc", "select * from glob('/etc/*')", R),
        ("read_parquet outside", "select * from read_parquet('{out}/data.parquet')", R),
        ("read_csv /etc/passwd", "select * from read_csv('/etc/passwd', header=false)", R),
        ("read_text /etc/passwd", "select content from read_text('/etc/passwd')", R),
        ("read_text through ..", "select * from read_text('{store}/../outside/secret.txt')", R),
        ("read_text in a sibling sharing the prefix", "select * from read_text('{evil}/secret.txt')", R),
        ("read_csv with file://", "select * from read_csv('file://{out}/secret.csv')", R),
        ("relative path outside", "select * from read_text('outside/secret.txt')", R),
        ("COPY FROM outside", "create table t(a varchar); copy t from '{out}/secret.csv'; select * from t", R),
        ("INSTALL httpfs", "install httpfs", "ran"),
        ("LOAD httpfs", "load httpfs", "ran"),
        ("LOAD a file outside", "load '{out}/evil.duckdb_extension'", "ran"),
        ("SET enable_external_access", "set enable_external_access = true; select * from read_text('{out}/secret.txt')", C),
        ("SET threads", "set threads = 1; select current_setting('threads')", C),
        ("PRAGMA threads", "pragma threads=1; select current_setting('threads')", C),
        ("SET allowed_directories", "set allowed_directories = ['/']; select * from read_text('/etc/passwd')", C),
        ("SET lock_configuration false", "set lock_configuration = false", C),
        ("empty SQL", "", "ran"),
        ("only a semicolon", ";", "ran"),
        ("only a comment", "-- just a comment", "ran"),
        ("syntax error", "selec 1", "ran"),
    ]
    cases = [SqlCase(n, s, "refuse", why) for n, s, why in refuse]
    cases.append(SqlCase("read through a symlink in the store", "select * from read_text('{store}/link/secret.txt')",
                         "refuse", R, setup="symlink"))
    run = [
        ("leading -- comment", "-- count the trials\nselect count(*) from trials"),
        ("block comment first", "/* count */ select count(*) from trials"),
        ("two statements", "select 1; select count(*) from trials"),
        ("read_parquet inside the store", "select count(*) from read_parquet('{store}/trials/*/*.parquet')"),
        ("SUMMARIZE a view", "summarize trials"),
        ("temp table", "create temp table t as select 1 as a; select * from t"),
        ("macro", "create macro m(x) as x + 1; select m(1)"),
        ("duckdb_settings()", "select name from duckdb_settings() limit 1"),
        ("drop a view in memory", "drop view trials; select 1"),
    ]
    cases += [SqlCase(n, s, "run") for n, s in run]
    either = [
        ("non-UTF-8 byte in SQL", b"select '\xff'"),
        ("5000 nested parentheses", "select " + "(" * 5000 + "1" + ")" * 5000),
        ("100 KB expression", "select 1" + " + 1" * 25_000),
        ("long-running query (1e11 rows hashed)", "select sum(hash(i)) from range(100000000000) t(i)"),
    ]
    cases += [SqlCase(n, s, "either") for n, s in either]
    huge = [
        ("30M-row result", "select * from range(30000000)"),
        ("1 GB string", "select repeat('x', 1000000000) as s"),
        ("50M-element list", "select list(i) from range(50000000) t(i)"),
    ]
    cases += [SqlCase(n, s, "either", huge=True) for n, s in huge]
    return cases


def _make_base(ctx: Context) -> Path | str:
    d = ctx.root / "base"
    d.mkdir()
    (d / "spec.yaml").write_text(SPEC)
    p = ctx.cli.run(["trial", "spec.yaml", "--index", "0", "--store", "store"], d, 180)
    if p.rc != 0:
        return f"`stepscope trial` exit {p.rc}: {p.first_err()}"
    return d / "store"


def _prepare(ctx: Context, base: Path, case: SqlCase) -> tuple[Path, Path, str]:
    """(case directory, store, a /tmp path the SQL may name)."""
    d = ctx.scratch("sql")
    store = d / "store"
    shutil.copytree(base, store)
    for where in (d / "outside", d / "store-evil"):
        where.mkdir()
        (where / "secret.txt").write_text(f"{CANARY}\n")
        (where / "secret.csv").write_text(f"canary\n{CANARY}\n")
        (where / "secret.json").write_text(f'{{"canary": "{CANARY}"}}\n')
        pq.write_table(pa.table({"canary": [CANARY]}), where / "data.parquet")
    (d / "home").mkdir()
    if case.setup == "symlink":
        (store / "link").symlink_to(d / "outside")
    return d, store, f"/tmp/stepscope-attack-{uuid.uuid4().hex}.csv"


def _fill(sql: str | bytes, d: Path, store: Path, tmp: str) -> str | bytes:
    if isinstance(sql, bytes):
        return sql
    return (sql.replace("{store}", str(store)).replace("{out}", str(d / "outside"))
            .replace("{evil}", str(d / "store-evil")).replace("{tmp}", tmp))


def classify(case: SqlCase, proc: Proc, wrote: list[str], leaked: bool) -> tuple[str, str]:
    if wrote and case.expect != "run":
        return "wrongly allowed", f"wrote {', '.join(wrote[:3])} (exit {proc.rc})"
    base = proc.base_class()
    if base:
        return base, f"{proc.first_err()} (peak RSS {proc.maxrss_mb:.0f} MB)"
    if proc.rc == 0:
        if case.expect == "refuse":
            why = "read outside the store" if leaked else case.why
            return "wrongly allowed", f"{why}: exit 0, output {proc.stdout.strip()[:80]!r}"
        if leaked:
            return "wrongly allowed", "read outside the store"
        return "ran (legitimate)", ""
    if proc.clean_refusal:
        return ("wrongly refused" if case.expect == "run" else "clean refusal"), proc.first_err()
    return "other", f"exit {proc.rc}: {proc.first_err()}"


def run(ctx: Context) -> list[Result]:
    base = _make_base(ctx)
    if isinstance(base, str):
        return [Result("sql", "base store", "harness error", base)]

    def one(case: SqlCase) -> Result:
        d, store, tmp = _prepare(ctx, base, case)
        sql = _fill(case.sql, d, store, tmp)
        before = tree_snapshot(d)
        proc = ctx.cli.run(["sql", sql, "--store", str(store), "--format", "csv"], d, ctx.timeout, ctx.mem_limit,
                           keep_stdout=not case.huge, env={"HOME": str(d / "home")})
        after = tree_snapshot(d)
        wrote = sorted(k for k, v in after.items() if before.get(k) != v)
        if os.path.lexists(tmp):
            wrote.append(tmp)
            os.unlink(tmp)
        leaked = any(m in proc.stdout for m in case.leaks) or (case.name == "glob /etc" and "/etc/" in proc.stdout)
        outcome, detail = classify(case, proc, wrote, leaked)
        extra = {"rc": proc.rc, "rss_mb": round(proc.maxrss_mb), "huge": case.huge}
        return Result("sql", case.name, outcome, detail, proc.seconds, extra)

    return pmap(ctx, one, build_cases(), lambda c: Result("sql", c.name, "skipped", "time budget spent"))


def summary(results: list[Result]) -> str:
    """Peak RSS of the huge-result cases."""
    huge = [r for r in results if r.extra.get("huge")]
    return "peak RSS: " + ", ".join(f"{r.name} {r.extra['rss_mb']} MB ({r.outcome})" for r in huge) if huge else ""
