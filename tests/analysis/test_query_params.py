"""Bad query options fail instead of answering nothing (issue 8, item 6)."""

from __future__ import annotations

import pytest

from stepscope.analysis.queries import QueryError, run_query
from stepscope.analysis.warehouse import connect


@pytest.fixture
def two_sweeps(store, write, rows):
    from datetime import timedelta

    write.sweep("s1")
    write.sweep("s2", rows.T0 + timedelta(hours=1))
    write.trial("s1", "t1", {"forward": [1.0]}, 0)
    write.trial("s2", "t2", {"forward": [1.0]}, 0)
    return store


def test_an_unknown_sweep_is_an_error_naming_the_known_ones(two_sweeps):
    with pytest.raises(QueryError, match=r"^query trials: -p sweep=s9: no such sweep in the store; "
                                          r"use latest, all, or one of: s2, s1$"):
        run_query(connect(two_sweeps), "trials", {"sweep": "s9"})


def test_a_known_sweep_latest_and_all_still_answer(two_sweeps):
    con = connect(two_sweeps)
    def ids(sweep):
        columns, result = run_query(con, "trials", {"sweep": sweep})
        return sorted(r[columns.index("trial_id")] for r in result)
    assert ids("s1") == ["t1"] and ids("latest") == ["t2"] and ids("all") == ["t1", "t2"]


def test_a_numeric_parameter_must_be_a_number(two_sweeps):
    with pytest.raises(QueryError, match=r"-p threshold=abc: expected a number, like its default 0\.9"):
        run_query(connect(two_sweeps), "launch_bound", {"threshold": "abc"})
    run_query(connect(two_sweeps), "launch_bound", {"threshold": "1.5"})


def test_an_empty_store_option_is_an_error(cli_runner):
    result = cli_runner("sql", "select 1", "--store", "")
    assert result.exit_code == 2
    assert result.output.strip() == "Error: --store: empty store location; give a directory or a URI (or leave --store out)"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "\u0661"])  # and an Arabic-Indic one: float() reads it, DuckDB does not
def test_a_non_finite_number_is_refused(value, two_sweeps):
    with pytest.raises(QueryError, match=f"-p threshold={value}: expected a number"):
        run_query(connect(two_sweeps), "launch_bound", {"threshold": value})
