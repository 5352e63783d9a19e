"""Rows out: csv, json and markdown stream in batches (bounded memory whatever the row
count), a table shows at most --max-rows rows and says when there were more, and a reader
that stops early (`| head -1`) ends the command quietly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from stepscope.orchestrator.output import DEFAULT_MAX_ROWS, render, write_rows


def test_table_shows_the_default_number_of_rows_and_says_there_were_more(cli_runner, tmp_path):
    store = str(tmp_path / "empty")
    result = cli_runner("sql", "select range as i from range(5000)", "--store", store, "--format", "table")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:3] == ["  i", "---", "  0"]  # sized by the rows shown (up to 999)
    assert len(lines) == 2 + DEFAULT_MAX_ROWS + 1 and lines[-2].strip() == str(DEFAULT_MAX_ROWS - 1)
    assert lines[-1] == f"({DEFAULT_MAX_ROWS} rows shown; more not shown: use --max-rows 0 for all, or --format csv)"


def test_max_rows_bounds_the_table_and_zero_shows_all(cli_runner, tmp_path):
    store = str(tmp_path / "empty")
    sql = "select range as i from range(5)"
    three = cli_runner("sql", sql, "--store", store, "--format", "table", "--max-rows", "3").output.splitlines()
    assert [ln.strip() for ln in three[2:5]] == ["0", "1", "2"] and three[-1].startswith("(3 rows shown; more not shown")
    exact = cli_runner("sql", sql, "--store", store, "--format", "table", "--max-rows", "5").output.splitlines()
    assert exact[-1] == "(5 rows)"  # exactly as many as allowed: nothing left out
    big = "select range as i from range(3000)"
    every = cli_runner("sql", big, "--store", store, "--format", "table", "--max-rows", "0").output.splitlines()
    assert len(every) == 2 + 3000 + 1 and every[-1] == "(3000 rows)"
    listed = cli_runner("query", "--list", "--format", "table", "--max-rows", "1").output.splitlines()
    assert len(listed) == 4 and listed[-1].startswith("(1 rows shown; more not shown")
    bad = cli_runner("sql", sql, "--store", store, "--max-rows", "-1")
    assert bad.exit_code == 2 and "--max-rows" in bad.output


def test_other_formats_stream_every_row_unless_max_rows_is_given(cli_runner, tmp_path):
    store = str(tmp_path / "empty")
    sql = "select range as i from range(25000)"  # three batches
    csv = cli_runner("sql", sql, "--store", store, "--format", "csv")
    assert csv.output.splitlines() == ["i", *map(str, range(25000))]
    cut = cli_runner("sql", sql, "--store", store, "--format", "json", "--max-rows", "2")
    assert json.loads(cut.stdout) == [{"i": 0}, {"i": 1}]  # still valid JSON; the note goes to stderr
    assert cut.stderr == "Note: stopped after 2 rows (--max-rows 2); more rows not shown\n"


def test_streamed_text_is_what_the_whole_result_renders_to():
    import datetime as dt

    columns = ["a", "b", "when"]
    rows = [(1, "x|y\nz", dt.datetime(2024, 5, 1, 12, 0)), (None, {"k": [1, 2]}, None), (2.5, None, dt.date(2024, 5, 2))]
    for fmt in ("csv", "json", "markdown", "table"):
        out: list[str] = []
        write_rows(columns, [rows[:1], rows[1:2], rows[2:]], fmt, max_rows=0, out=out.append)
        assert "".join(out) == render(columns, rows, fmt) + "\n", fmt
    assert json.loads(render(columns, rows, "json"))[0] == {"a": 1, "b": "x|y\nz", "when": "2024-05-01T12:00:00"}
    assert render(columns, rows, "csv").splitlines()[1] == "1,\"x|y"  # a quoted field spans lines
    assert render(columns, [], "json") == "[]"


def test_a_table_reads_no_further_than_it_shows():
    def batches():
        yield [(i,) for i in range(10)]
        yield [(i,) for i in range(10, 20)]
        raise AssertionError("read past the rows a table shows")

    out: list[str] = []
    write_rows(["i"], batches(), "table", max_rows=10, out=out.append)
    assert out[0].splitlines()[-1].startswith("(10 rows shown; more not shown")


def _stepscope(*args: str) -> list[str]:
    return [sys.executable, "-m", "stepscope", *args]


def _env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("STEPSCOPE_STORE", "RAY_ADDRESS")}
    return {**env, "STEPSCOPE_STORE": str(tmp_path / "empty")}


# The CSV is streamed to a reader that only counts bytes; the command's peak RSS must stay
# far below what holding 30 million rows takes (past 3 GB as Python tuples).
COUNTER = """
import resource, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE)
n = 0
while chunk := proc.stdout.read(1 << 20):
    n += len(chunk)
print(proc.wait(), n, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


@pytest.mark.slow
def test_thirty_million_rows_as_csv_in_bounded_memory(tmp_path):
    command = _stepscope("sql", "select * from range(30000000)", "--format", "csv")
    out = subprocess.run([sys.executable, "-c", COUNTER, *command], env=_env(tmp_path),
                         capture_output=True, text=True, timeout=300)
    rc, size, peak = map(int, out.stdout.split())
    assert rc == 0, out.stderr[-2000:]
    assert size == len("range\n") + sum(len(str(i)) + 1 for i in range(30_000_000))
    assert peak < 600 * 2**20, f"peak RSS {peak / 2**20:.0f} MiB"


@pytest.mark.slow
def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path):
    """`stepscope sql ... | head -1`: no traceback, no `Error: unexpected`, the status a
    shell reports for a tool that SIGPIPE ended."""
    pipeline = "set -o pipefail; " + " ".join(
        f"'{a}'" for a in _stepscope("sql", "select * from range(10000000)", "--format", "csv")
    ) + " | head -1"
    out = subprocess.run(["bash", "-c", pipeline], env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stdout, out.stderr) == (141, "range\n", "")
    # A reader gone before a short output is written (`stepscope workloads | true`).
    proc = subprocess.Popen(_stepscope("workloads", "--format", "csv"), env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read()
    assert (proc.wait(timeout=60), err) == (141, b"")
