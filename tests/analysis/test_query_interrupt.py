"""A long query stops on Ctrl-C (exit code 130) or at --timeout (one line, exit code 2), at
whatever point DuckDB is: its own check for Ctrl-C does not always come back
(duckdb/duckdb#15925), so stepscope interrupts the connection from a watcher thread."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

LONG = "select sum(hash(i)) from range(100000000000::bigint) t(i)"  # minutes of work on any machine


@pytest.mark.slow
@pytest.mark.parametrize("after_s", [2.0, 7.0])
def test_ctrl_c_stops_a_long_query(after_s, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "STEPSCOPE_STORE"}
    # A suite started in the background (`cmd &` in a script) runs with SIGINT ignored, which
    # its children inherit and Python then keeps: give the CLI SIGINT's default, as a terminal does.
    proc = subprocess.Popen([sys.executable, "-m", "stepscope", "sql", "--store", str(tmp_path), LONG],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        time.sleep(after_s)
        assert proc.poll() is None, proc.communicate()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert (proc.returncode, err, out) == (130, "Interrupted.\n", "")
        assert time.monotonic() - t0 < 10
    finally:  # a query that was not stopped would keep every core busy for the rest of the suite
        proc.kill()
        proc.wait()


def test_timeout_stops_a_long_query_in_one_line(cli_runner, tmp_path, store, write):
    t0 = time.monotonic()
    result = cli_runner("sql", LONG, "--timeout", "0.5", "--store", str(tmp_path))
    assert result.exit_code == 2
    assert result.output == ("Error: the query ran past --timeout 0.5 s and was stopped; raise --timeout, "
                             "or narrow the query\n")
    assert time.monotonic() - t0 < 20
    write.sweep("s1")  # a query of a store where no sweep has run is refused (issue 10, item 4)
    fast = cli_runner("query", "trials", "--timeout", "30", "--store", store.location, "--format", "csv")
    assert fast.exit_code == 0, fast.output


def test_a_timeout_that_fires_before_the_query_starts_still_stops_it(cli_runner, tmp_path):
    # An interrupt DuckDB receives before the query runs is not kept: the watcher repeats it.
    result = cli_runner("sql", LONG, "--timeout", "1e-9", "--store", str(tmp_path))
    assert result.exit_code == 2 and "ran past --timeout" in result.output


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_a_timeout_must_be_a_finite_number(value, cli_runner, tmp_path):
    result = cli_runner("sql", "select 1", "--timeout", value, "--store", str(tmp_path))
    assert result.exit_code == 2 and "give a number of seconds" in result.output
