"""`stepscope sql` and `stepscope query` are a read-only window on the store (issue 8, item 3):
no statement writes or deletes a file, attaches a database, installs an extension or reads a
file outside the store. Each refusal is one line and exit code 2, and nothing is written."""

from __future__ import annotations

import os

import pytest

from stepscope.analysis.queries import QueryError, run_query, run_sql
from stepscope.analysis.warehouse import connect


@pytest.fixture
def filled(store, write):
    write.sweep("s1")
    write.trial("s1", "t1", {"forward": [1.0, 2.0]}, 0)
    return store


def _outside(tmp_path) -> str:
    path = tmp_path / "outside.txt"
    path.write_text("a secret on the host\n")
    return str(path)


def attacks(store_root: str, outside: str) -> dict[str, str]:
    return {
        "copy out": f"copy (select 42 as a) to '{outside}.csv'",
        "copy into the store": f"copy (select 42 as a) to '{store_root}/trials/sweep_id=s1/evil.parquet' (format parquet)",
        "export": f"export database '{store_root}/exported'",
        "attach": f"attach '{store_root}/x.duckdb'",
        "install": "install httpfs",
        "load": "load httpfs",
        "read a host file": f"select * from read_csv('{outside}')",
        "read_text": f"select * from read_text('{outside}')",
        "read /etc/passwd": "select * from read_csv('/etc/passwd')",
        "glob the host": "select * from glob('/etc/*')",
        "reconfigure": "set enable_external_access = true",
        "two statements, one bad": f"select 1; copy (select 1) to '{outside}.2.csv'",
        "explain analyze runs a copy": f"explain analyze copy (select 1) to '{store_root}/explained.csv'",
        "a prepared copy": f"prepare p as copy (select 1) to '{store_root}/prepared.csv'; execute p",
        "a prepared copy behind a comment": f"/* hi */ prepare \"q\" as copy (select 1) to '{store_root}/q.csv'",
        "explain of a prepared copy": f"explain prepare p as copy (select 1) to '{store_root}/e.csv'",
        "not UTF-8": "select '\udcff'",
        "import_database runs a folder's SQL": f"pragma import_database('{store_root}')",
    }


def _files(root: str) -> set[str]:
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs}


@pytest.mark.parametrize("attack", list(attacks("/s", "/o")))
def test_every_attack_is_refused_and_writes_nothing(attack, filled, tmp_path):
    outside = _outside(tmp_path)
    before = _files(filled.local_root) | _files(str(tmp_path))
    con = connect(filled)
    with pytest.raises(QueryError):
        run_sql(con, attacks(filled.local_root, outside)[attack])
    assert _files(filled.local_root) | _files(str(tmp_path)) == before
    # the window still works after a refusal
    assert run_sql(con, "select count(*) as n from trials") == (["n"], [(1,)])


def test_the_store_and_the_named_queries_still_read(filled):
    con = connect(filled)
    assert run_sql(con, "select trial_id from trials") == (["trial_id"], [("t1",)])
    assert run_sql(con, "select count(*) from read_parquet('" + filled.local_root + "/trials/*/*.parquet')")[1] == [(1,)]
    run_sql(con, "create view mine as select 42 as answer")  # in memory: harmless
    assert run_sql(con, "select * from mine") == (["answer"], [(42,)])
    columns, result = run_query(con, "trials")
    assert "trial_id" in columns and [r[columns.index("trial_id")] for r in result] == ["t1"]


@pytest.mark.parametrize("sql", ["", "   ", "-- only a comment", "/* nothing */"])
def test_sql_with_no_statement_gets_a_clean_message(sql, filled):
    with pytest.raises(QueryError, match=r"^sql: no statement to run"):
        run_sql(connect(filled), sql)


def test_the_cli_refuses_in_one_line_with_exit_2(cli_runner, filled, tmp_path):
    outside = _outside(tmp_path)
    result = cli_runner("sql", f"copy (select 1) to '{outside}.csv'", "--store", filled.local_root)
    assert result.exit_code == 2 and not os.path.exists(outside + ".csv")
    assert result.output.strip() == (
        "Error: sql: COPY statements are refused: `stepscope sql` is a read-only window on the store; "
        "use select (export results with --format csv)"
    )
    result = cli_runner("sql", f"select * from read_csv('{outside}')", "--store", filled.local_root)
    assert result.exit_code == 2 and "secret" not in result.output
    assert result.output.startswith("Error: Permission Error: Cannot access file") and len(result.output.strip().splitlines()) == 1


def test_sql_may_open_with_a_comment_on_the_command_line(cli_runner, filled):
    # Click would read a leading `--` as an option: the sql command takes it as the SQL.
    result = cli_runner("sql", "-- how many?\nselect count(*) as n from trials where 1 = 1", "--store",
                        filled.local_root, "--format", "csv")
    assert (result.exit_code, result.output) == (0, "n\n1\n")
    result = cli_runner("sql", "-- only a comment", "--store", filled.local_root)
    assert result.exit_code == 2 and result.output.startswith("Error: sql: no statement to run")


def test_explain_and_prepare_of_a_query_still_run(filled):
    con = connect(filled)
    assert run_sql(con, "prepare n as select count(*) as n from trials where trial_id = $1; execute n('t1')") == (
        ["n"], [(1,)])
    columns, rows = run_sql(con, "explain analyze select count(*) from trials")
    assert rows


def test_duckdb_temp_folder_is_private_not_the_working_directory(filled, tmp_path, monkeypatch):
    # DuckDB's default temp_directory is `.tmp` in the working directory, and it adds it to the
    # directories a locked connection may read: a file there would be readable.
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "secret.txt").write_text("a secret")
    con = connect(filled)
    with pytest.raises(QueryError, match="Permission Error"):
        run_sql(con, "select * from read_text('.tmp/secret.txt')")
    allowed = run_sql(con, "select current_setting('allowed_directories')")[1][0][0]
    assert str(tmp_path / ".tmp") not in str(allowed)
