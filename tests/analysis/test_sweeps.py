"""One sweep selection (`stepscope.analysis.sweeps`): each syntax, each error line, and the
default of each reader (query, compare, report, compact), on real stores and DuckDB."""

from __future__ import annotations

import inspect
import json
from datetime import timedelta

import pytest

from stepscope.analysis.compact import compact, plan_compaction
from stepscope.analysis.compare import compare
from stepscope.analysis.queries import QueryError, list_queries, run_query
from stepscope.analysis.report import render_report, write_report
from stepscope.analysis.sweeps import (
    ALL,
    DEFAULT,
    KnownSweep,
    SweepError,
    choose,
    resolve,
    sql_value,
)
from stepscope.analysis.warehouse import connect


@pytest.fixture
def three(store, write, rows):
    """old and new are runs of `nightly`; other is `adhoc`, the newest of all."""
    for i, (sweep_id, name) in enumerate((("old", "nightly"), ("new", "nightly"), ("other", "adhoc"))):
        write.sweep(sweep_id, rows.T0 + timedelta(hours=i), name=name)
        for precision, scale in (("fp32", 1.0), ("bf16", 2.0)):
            write.trial(sweep_id, f"{sweep_id}-{precision}", {"forward": [scale * (1 + k % 3) for k in range(12)]},
                        precision=precision, params=json.dumps({"precision": precision}))
    return store


def test_each_syntax(three):
    con = connect(three)
    assert resolve(con, "all") is None
    assert resolve(con, "latest") == ["other"]
    assert resolve(con, "old") == ["old"]
    assert resolve(con, "nightly") == ["new", "old"]  # a name: every sweep of that name
    assert resolve(con, "old, latest") == ["old", "other"]  # a comma list: the union, sorted
    assert resolve(con, "old,all") is None  # all among others is still all
    assert resolve(con, None) == ["other"]  # None: the default, latest
    assert resolve(con, None, default=ALL) is None


def test_keep_adds_a_sweep_by_id_or_by_a_name_of_one_sweep(three):
    con = connect(three)
    assert resolve(con, "latest", keep=["old"]) == ["old", "other"]
    assert resolve(con, "latest", keep=["adhoc"]) == ["other"]
    assert resolve(con, "latest", keep=["nightly"]) == ["other"]  # two sweeps: not one to keep
    assert resolve(con, "latest", keep=["nosuch"]) == ["other"]  # the caller names an unknown baseline
    assert resolve(con, "all", keep=["old"]) is None


def test_an_id_wins_over_a_name_that_reads_the_same(store, write, rows):
    write.sweep("nightly", name="x")
    write.sweep("s2", rows.T0 + timedelta(hours=1), name="nightly")
    write.trial("nightly", "t1", {"forward": [1.0]})
    assert resolve(connect(store), "nightly") == ["nightly"]


def test_the_errors_are_one_line_naming_the_option_and_the_fix(three):
    con = connect(three)
    with pytest.raises(SweepError) as unknown:
        resolve(con, "s9")
    assert str(unknown.value) == "--sweep s9: no such sweep in the store; use latest, all, or one of: other, new, old"
    with pytest.raises(SweepError) as empty:
        resolve(con, " , ")
    assert str(empty.value) == "--sweep: give latest, all, or sweep ids or names separated by commas"
    with pytest.raises(SweepError) as param:
        resolve(con, "s9", option="-p sweep")
    assert str(param.value).startswith("-p sweep=s9: no such sweep in the store; ")


def test_latest_needs_a_sweeps_row(store, write):
    write.trial("s1", "t1", {"forward": [1.0]})  # trials, no sweeps row
    con = connect(store)
    with pytest.raises(SweepError) as latest:
        resolve(con, "latest")
    assert str(latest.value) == ("--sweep latest: the store has no sweeps row to tell the newest sweep (`stepscope "
                                 "store check` says why); give --sweep all, or one of: s1")
    assert resolve(con, "s1") == ["s1"] and resolve(con, "all") is None
    assert resolve(connect(store.location + "-none"), "latest") == []  # no sweep at all: nothing to choose


def test_the_known_sweeps_are_shown_newest_first_then_a_count():
    known = [KnownSweep(f"s{i:02}", None, i, True) for i in range(12)] + [KnownSweep("zz")]
    with pytest.raises(SweepError, match=r"one of: s11, s10, s09, .*, s02 \(and 3 more\)$"):
        choose(known, "nope")
    assert choose(lambda: pytest.fail("all reads nothing"), "all") is None


def test_sql_value_is_what_in_sweep_reads(three):
    con = connect(three)
    assert sql_value(None) == "all" and sql_value(["a", "b"]) == "a,b" and sql_value([]) == ""

    def chosen(value):
        return sorted(r[0] for r in con.execute("select distinct sweep_id from trials where in_sweep(sweep_id, $s)",
                                                {"s": value}).fetchall())
    assert chosen("all") == ["new", "old", "other"]
    assert chosen("old") == ["old"] and chosen("old,new") == ["new", "old"] and chosen("") == []
    assert chosen("latest") == []  # in_sweep resolves nothing: latest and names are sweeps.resolve's


def test_a_named_query_takes_the_same_selection(three):
    con = connect(three)

    def sweeps_of(value):
        columns, result = run_query(con, "trials", {"sweep": value} if value is not None else {})
        return sorted({r[columns.index("sweep_id")] for r in result})
    assert sweeps_of(None) == ["other"]  # the default: latest
    assert sweeps_of("nightly") == ["new", "old"] and sweeps_of("old,other") == ["old", "other"]
    with pytest.raises(QueryError, match=r"^query trials: -p sweep=s9: no such sweep in the store; "):
        sweeps_of("s9")


# ------------------------------------------------------------------ the defaults, pinned


def test_every_named_query_defaults_to_latest():
    with_sweep = [q for q in list_queries() if any(p.name == "sweep" for p in q.parameters)]
    assert with_sweep and DEFAULT == "latest"
    assert {q.name: next(p.default for p in q.parameters if p.name == "sweep") for q in with_sweep} == \
        {q.name: DEFAULT for q in with_sweep}


def test_compare_defaults_to_latest_and_by_sweep_to_every_sweep(three):
    con = connect(three)
    assert inspect.signature(compare).parameters["sweep"].default is None
    assert compare(con, by="precision").rows == compare(con, by="precision", sweep="latest").rows
    assert {r["n_baseline"] for r in compare(con, by="precision").rows} == {4}  # one trial: 4 blocks of 12 steps
    assert compare(con, by="sweep").values == ["old", "new", "other"]
    assert compare(con, by="sweep", baseline="old", sweep="latest").values == ["old", "other"]


def test_report_defaults_to_latest(three, tmp_path):
    con = connect(three)
    for function in (render_report, write_report):
        assert inspect.signature(function).parameters["sweep"].default is None
    page = render_report(con)[0]
    assert "Sweep: other (--sweep latest)" in page
    assert render_report(con, sweep="latest")[0] == page
    assert "Sweeps: old, new, other (--sweep all)" in render_report(con, sweep="all")[0]


def test_compact_defaults_to_every_sweep(three):
    assert inspect.signature(plan_compaction).parameters["sweep"].default is None
    assert inspect.signature(compact).parameters["sweep"].default is None
    assert [w.sweep_id for w in plan_compaction(three).sweeps] == ["new", "old", "other"]
    assert [w.sweep_id for w in plan_compaction(three, "latest").sweeps] == ["other"]
    assert [w.sweep_id for w in plan_compaction(three, "nightly").sweeps] == ["new", "old"]
    with pytest.raises(SweepError, match=r"^--sweep s9: no such sweep in the store; use latest, all, or one of: "
                                         r"other, new, old$"):
        plan_compaction(three, "s9")
