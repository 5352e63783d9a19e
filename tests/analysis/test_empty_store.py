"""Empty is not the same as missing (issue 10, item 4): `stepscope query` and `stepscope sql`
over a store that is not there, where no sweep has run, or whose every file is skipped say so
in one line with exit code 2, naming the store as the user gave it and what to do; an unknown
`-p sweep=` names the sweeps there; a filter that matches nothing in a store with sweeps is
still an empty table with exit code 0."""

from __future__ import annotations

import os

import pytest

from stepscope.analysis.queries import QueryError, reads_relations, run_query
from stepscope.analysis.warehouse import (
    EMPTY,
    MISSING,
    READY,
    UNREADABLE,
    EmptyStoreError,
    StoreContents,
    connect,
    open_store,
)

ELSEWHERE = "or point --store or STEPSCOPE_STORE at the store a sweep wrote to"


def missing_line(named: str, run: str) -> str:
    return f"Error: {named}: no store there (nothing was ever written to it); run a sweep first ({run}), {ELSEWHERE}"


def empty_line(named: str, run: str) -> str:
    return f"Error: {named}: no sweep has run in this store (it holds no results); run one ({run}), {ELSEWHERE}"


def refused(result) -> str:
    """The one line a refused command prints: exit code 2, nothing on stdout (no empty table)."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# ---------------------------------------------------------------- a store that is not there


COMMANDS = [("query", "trials"), ("query", "phase_shares"), ("sql", "select * from trials"),
            ("sql", "select count(*) from steps")]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_store_that_does_not_exist_is_one_line_naming_it(command, cli_runner, tmp_path):
    where = str(tmp_path / "no-such-store")
    line = refused(cli_runner(*command, "--store", where))
    assert line == missing_line(f"--store {where}", f"stepscope run SPEC --store {where}")
    assert not os.path.exists(where)  # reading never makes the store


def test_the_store_is_named_as_the_user_gave_it(cli_runner, tmp_path, monkeypatch):
    where = str(tmp_path / "from-env")
    line = refused(cli_runner("query", "trials", env={"STEPSCOPE_STORE": where}))
    assert line == missing_line(f"STEPSCOPE_STORE={where}", "stepscope run SPEC")
    monkeypatch.chdir(tmp_path)
    line = refused(cli_runner("sql", "select * from sweeps"))
    assert line == missing_line("./stepscope-results (the default store: no --store, STEPSCOPE_STORE unset)",
                                "stepscope run SPEC")
    spaced = str(tmp_path / "my runs")  # the command to paste is quoted for the shell
    assert refused(cli_runner("query", "trials", "--store", spaced)).endswith(
        f"(stepscope run SPEC --store '{spaced}'), {ELSEWHERE}")


# ---------------------------------------------------------------- a store where no sweep has run


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_store_where_no_sweep_has_run_is_one_line(command, cli_runner, tmp_path):
    where = tmp_path / "empty"
    (where / "_probe").mkdir(parents=True)  # what `stepscope run`'s write check leaves: hidden, not data
    (where / "trials").mkdir()  # a table folder with no partition
    line = refused(cli_runner(*command, "--store", str(where)))
    assert line == empty_line(f"--store {where}", f"stepscope run SPEC --store {where}")


def test_sql_that_reads_no_relation_still_answers_over_an_empty_store(cli_runner, tmp_path):
    for where in (tmp_path / "missing", tmp_path):
        result = cli_runner("sql", "with t as (select 41 as n) select n + 1 as n from t", "--store", str(where),
                            "--format", "csv")
        assert (result.exit_code, result.output) == (0, "n\n42\n")


def test_usage_errors_come_before_the_store(cli_runner, tmp_path):
    where = str(tmp_path / "missing")
    r = cli_runner("query", "nosuch", "--store", where)
    assert r.exit_code == 2 and r.stderr.startswith("Error: unknown query 'nosuch'; known queries: ")
    r = cli_runner("query", "trials", "-p", "swep=all", "--store", where)
    assert r.exit_code == 2 and r.stderr.startswith("Error: query trials: unknown parameter 'swep'")
    r = cli_runner("sql", "select nope from trials", "--store", where)  # the SQL is checked first
    assert r.exit_code == 2 and r.stderr.startswith("Error: Binder Error:") and "nope" in r.stderr


def test_a_store_whose_every_file_is_skipped_points_at_store_check(cli_runner, store, write):
    write.sweep("s1")
    sweep_file = os.path.join(store.local_root, "sweeps", "sweep_id=s1", "sweep.parquet")
    with open(sweep_file, "wb"):
        pass  # zero bytes: no reader reads it
    stray = os.path.join(store.local_root, "trials", "loose.parquet")
    os.makedirs(os.path.dirname(stray))
    with open(stray, "wb") as f:
        f.write(b"PAR1")
    result = cli_runner("query", "trials", "--store", store.location)
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert sorted(lines[:2]) == [
        f"Warning: skipped {sweep_file}: empty file (zero bytes), not Parquet",
        f"Warning: skipped {stray}: not a sweep partition (stepscope writes trials/sweep_id=<id>/<name>.parquet)"]
    assert lines[2:] == [f"Error: --store {store.location}: no sweep's files can be read (2 file(s) skipped); "
                         f"see why with: stepscope store check --store {store.location}"]


# ---------------------------------------------------------------- a store with sweeps


@pytest.fixture
def two_sweeps(store, write, rows):
    """s1 (older, one trial t1) and s2 (newer, one trial t2, status oom)."""
    from datetime import timedelta

    write.sweep("s1")
    write.sweep("s2", rows.T0 + timedelta(hours=1))
    write.trial("s1", "t1", {"forward": [1.0, 2.0]}, 0)
    write.trial("s2", "t2", {"forward": [1.0, 2.0]}, 0, status="oom")
    return store


def test_a_filter_that_matches_nothing_is_an_empty_table_and_exit_0(cli_runner, two_sweeps):
    where = two_sweeps.location
    result = cli_runner("sql", "select trial_id from trials where status = 'timeout'", "--store", where,
                        "--format", "csv")
    assert (result.exit_code, result.output) == (0, "trial_id\n")
    result = cli_runner("sql", "select trial_id from trials where status = 'timeout'", "--store", where,
                        "--format", "table")
    assert (result.exit_code, result.output) == (0, "trial_id\n--------\n(0 rows)\n")
    # A named query whose sweep has no trial of that kind: s1's trial is ok, the oom is s2's.
    result = cli_runner("sql", "select trial_id from trials where status = 'oom' and sweep_id = 's1'", "--store",
                        where, "--format", "csv")
    assert (result.exit_code, result.output) == (0, "trial_id\n")


def test_an_empty_answer_of_a_named_query_in_a_store_with_sweeps_is_exit_0(cli_runner, store, write, rows):
    from datetime import timedelta

    write.sweep("s1")
    write.sweep("s2", rows.T0 + timedelta(hours=1))  # the latest: started, no trial stored yet
    write.trial("s1", "t1", {"forward": [1.0]}, 0)
    result = cli_runner("query", "trials", "--store", store.location, "--format", "csv")
    assert result.exit_code == 0 and result.stderr == ""
    assert len(result.stdout.splitlines()) == 1  # the header: sweep s2 has no trial
    result = cli_runner("query", "trials", "-p", "sweep=s1", "--store", store.location, "--format", "csv")
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 2


def test_an_unknown_sweep_names_the_sweeps_present_newest_first(cli_runner, two_sweeps, write):
    write.trial("s0", "t0", {"forward": [1.0]}, 0)  # a sweep known only by its trials (no sweeps row)
    line = refused(cli_runner("query", "phase_shares", "-p", "sweep=s9", "--store", two_sweeps.location))
    assert line == "Error: query phase_shares: -p sweep=s9: no such sweep in the store; use latest, all, or one of: s2, s1, s0"
    result = cli_runner("query", "trials", "-p", "sweep=s0", "--store", two_sweeps.location, "--format", "csv")
    assert result.exit_code == 0
    rows = result.stdout.splitlines()
    assert len(rows) == 2 and ",t0," in f",{rows[1]},"


def test_an_unknown_sweep_lists_ten_then_a_count(store, write, rows):
    from datetime import timedelta

    for i in range(12):
        write.sweep(f"s{i:02d}", rows.T0 + timedelta(hours=i))
    newest_first = [f"s{i:02d}" for i in range(11, -1, -1)]
    with pytest.raises(QueryError) as err:
        run_query(connect(store), "trials", {"sweep": "nope"})
    assert str(err.value).endswith(f"or one of: {', '.join(newest_first[:10])} (and 2 more)")


def test_latest_with_trials_but_no_sweeps_row_is_an_error_not_no_rows(cli_runner, store, write):
    write.trial("s7", "t1", {"forward": [1.0]}, 0)
    # Neither --sweep nor -p sweep= given: the message names the option, --sweep.
    line = refused(cli_runner("query", "trials", "--store", store.location))
    assert line == ("Error: query trials: --sweep latest: the store has no sweeps row to tell the newest sweep "
                    "(`stepscope store check` says why); give --sweep all, or one of: s7")
    # Given as -p sweep=, the message says so.
    line = refused(cli_runner("query", "trials", "-p", "sweep=latest", "--store", store.location))
    assert line.startswith("Error: query trials: -p sweep=latest: ") and line.endswith("give -p sweep=all, or one of: s7")
    result = cli_runner("query", "trials", "-p", "sweep=all", "--store", store.location, "--format", "csv")
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 2


# ---------------------------------------------------------------- the library


def test_open_store_says_what_the_listing_found(tmp_path, store, write):
    assert open_store(str(tmp_path / "missing")).contents.state == MISSING
    assert open_store(str(tmp_path)).contents.state == EMPTY
    write.sweep("s1")
    write.trial("s2", "t1", {"forward": [1.0]}, 0)
    opened = open_store(store)
    assert (opened.contents.state, opened.contents.sweep_ids, opened.contents.skipped) == (
        READY, frozenset({"s1", "s2"}), 0)
    # connect() over the same store: the same views, empty views for an empty store.
    assert opened.con.execute("select count(*) from trials").fetchone() == (1,)
    assert connect(str(tmp_path / "missing")).execute("select count(*) from trials").fetchone() == (0,)


@pytest.mark.parametrize(("contents", "state"), [
    (StoreContents("x", False, frozenset(), 0), MISSING),
    (StoreContents("x", True, frozenset(), 0), EMPTY),
    (StoreContents("x", True, frozenset(), 3), UNREADABLE),
    (StoreContents("x", True, frozenset({"s1"}), 3), READY),  # some files skipped, a sweep read: an answer
])
def test_states_and_which_refuse(contents, state):
    assert contents.state == state
    if state == READY:
        contents.require_results()
    else:
        with pytest.raises(EmptyStoreError, match=r"^store x: "):
            contents.require_results()


@pytest.mark.parametrize(("sql", "reads"), [
    ("select 1", False),
    ("select * from range(5)", False),
    ("with t as (select 1 as x) select * from t", False),
    ("with recursive t(n) as (select 1 union all select n + 1 from t where n < 3) select * from t", False),
    ("select * from trials", True),
    ("select (select count(*) from steps) as n", True),
    ("select 1; select * from sweeps", True),
    ("create view v as select 1; select * from v", True),  # a view the SQL makes counts as the store's
    ("from measured_steps", True),
    ("summarize trials", True),
    ("select * from", True),  # SQL that does not parse: the execution reports it, never this check
])
def test_reads_relations(sql, reads, store):
    assert reads_relations(connect(store), sql) is reads


# ---------------------------------------------------------------- URI stores (moto S3)


def test_an_s3_prefix_with_nothing_under_it_is_no_store(cli_runner, s3_store):
    line = refused(cli_runner("query", "trials", "--store", s3_store))
    assert line == missing_line(f"--store {s3_store}", f"stepscope run SPEC --store '{s3_store}'")


def test_an_s3_prefix_with_no_sweep_is_an_empty_store(cli_runner, s3_server, s3_bucket, s3_store):
    s3_server.client.put_object(Bucket=s3_bucket, Key="results/_probe/x", Body=b"")
    line = refused(cli_runner("sql", "select * from trials", "--store", s3_store))
    assert line == empty_line(f"--store {s3_store}", f"stepscope run SPEC --store '{s3_store}'")


def test_an_s3_store_with_a_sweep_answers_an_empty_filter_with_exit_0(cli_runner, s3_store, rows):
    from stepscope.storage.store import Store

    Store(s3_store).write_sweep(rows.sweep("s1"))
    result = cli_runner("sql", "select trial_id from trials where status = 'oom'", "--store", s3_store,
                        "--format", "csv")
    assert (result.exit_code, result.output) == (0, "trial_id\n")


def test_a_missing_bucket_is_one_line(cli_runner, s3_server, s3_bucket):
    uri = s3_server.uri("no-such-bucket-here")
    line = refused(cli_runner("query", "trials", "--store", uri))
    assert line == (f"Error: --store {uri}: no store there: bucket 'no-such-bucket-here' does not exist (or these "
                    f"credentials cannot see it); check its name, {ELSEWHERE}")
