"""Every named query's `-- columns:` header against the columns it really returns."""

from __future__ import annotations

import re

import pytest

from stepscope.analysis.queries import QueryInfo, list_queries, run_query
from stepscope.analysis.warehouse import connect

QUERIES = list_queries()


def header_columns(query: QueryInfo) -> list[str]:
    """The names the header's `-- columns:` list gives, in order. A name may carry a note
    in parentheses (which may hold commas); the list goes on over the `--   ` lines below."""
    header = []
    for line in query.path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("--"):
            break
        header.append(line)
    starts = [i for i, line in enumerate(header) if line.startswith("-- columns:")]
    assert len(starts) == 1, f"queries/{query.path.name}: its header needs one `-- columns:` line"
    parts = [header[starts[0]].removeprefix("-- columns:")]
    for line in header[starts[0] + 1 :]:
        if not line.startswith("--   "):
            break
        parts.append(line.removeprefix("--"))
    text = re.sub(r"\([^()]*\)", "", ",".join(parts))
    names = [name.strip() for name in text.split(",") if name.strip()]
    odd = [name for name in names if not re.fullmatch(r"\w+", name)]
    assert not odd, f"queries/{query.path.name}: not column names in `-- columns:`: {odd}"
    return names


def test_header_columns_reads_notes_and_continuation_lines(tmp_path):
    path = tmp_path / "q.sql"
    path.write_text(
        "-- What it answers.\n"
        "--\n"
        "-- param: sweep = latest  (a sweep_id)\n"
        "--\n"
        "-- columns: sweep_id, trials (ok trials, pooled),\n"
        "--   step_ms (device, phases summed), launch_bound\n"
        "--\n"
        "-- columns: not_a_header_any_more\n"
        "\n"
        "select 1\n"
    )
    with pytest.raises(AssertionError, match="one `-- columns:` line"):
        header_columns(QueryInfo("q", "", (), path))
    path.write_text(path.read_text().replace("-- columns: not_a_header_any_more\n", ""))
    assert header_columns(QueryInfo("q", "", (), path)) == [
        "sweep_id",
        "trials",
        "step_ms",
        "launch_bound",
    ]


@pytest.fixture
def small_store(store, write):
    """A real store that every named query has rows for: a CPU trial, and a CUDA trial
    with counted FLOPs (launch_bound reads only CUDA trials, utilization only counted ones)."""
    write.sweep("s1")
    write.trial("s1", "cpu", {"forward": [9.0, 2.0, 3.0]}, warmup=1)
    write.trial(
        "s1",
        "gpu",
        {"forward": [9.0, 2.0, 3.0]},
        warmup=1,
        trial_index=1,
        config_id="c-gpu",
        device_kind="cuda",
        device_name="NVIDIA H100 80GB HBM3",
        flops_forward=10**9,
        flops_backward=2 * 10**9,
    )
    return store


@pytest.mark.parametrize("query", QUERIES, ids=[q.name for q in QUERIES])
def test_the_columns_header_lists_what_the_query_returns(small_store, query):
    columns, rows = run_query(connect(small_store), query.name, {})
    assert rows, f"{query.name}: no rows on the test store; write a trial it reports on"
    assert header_columns(query) == columns, (
        f"queries/{query.path.name}: `-- columns:` is not its output"
    )
