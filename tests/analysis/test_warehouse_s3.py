"""stepscope.analysis.warehouse over an s3:// store: a real S3 API (moto's server on loopback, see
tests/conftest.py), read through the store's pyarrow filesystem, not DuckDB's httpfs."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stepscope.analysis.queries import run_query
from stepscope.analysis.warehouse import connect
from stepscope.storage.schema import TABLES
from stepscope.storage.store import Store, StoreError


@pytest.fixture
def store(s3_store) -> Store:
    """Overrides tests/analysis/conftest.py's local store: `write` writes to S3 here."""
    return Store(s3_store)


def count(con, relation: str) -> int:
    return con.execute(f"select count(*) from {relation}").fetchone()[0]


def in_order(table: str, row: dict) -> tuple:
    return tuple(row[name] for name in TABLES[table].names)


def test_round_trip_with_exact_values(store, write, rows):
    write.sweep("s1")
    write.trial("s1", "t1", {"forward": [2.0, 3.0, 5.0], "backward": [4.0, 6.0, 8.0]}, warmup=1)
    con = connect(store.location)

    assert con.execute("select * from sweeps").fetchall() == [in_order("sweeps", rows.sweep("s1"))]
    assert con.execute("select * from trials").fetchall() == [in_order("trials", rows.trial("s1", "t1"))]
    expected_steps = rows.steps("s1", "t1", {"forward": [2.0, 3.0, 5.0], "backward": [4.0, 6.0, 8.0]}, 1)
    got_steps = con.execute("select * from steps order by iteration, phase_index").fetchall()
    assert got_steps == [in_order("steps", r) for r in expected_steps]

    columns, result = run_query(con, "phase_breakdown", {})
    by_phase = {r[columns.index("phase")]: r for r in result}
    assert list(by_phase) == ["data", "to_device", "forward", "loss", "backward", "optimizer"]
    forward, backward = by_phase["forward"], by_phase["backward"]
    # Measured steps are iterations 1 and 2: medians 4.0 (forward) and 7.0 (backward), the
    # other four phases 1.0 each: 15 ms in all.
    assert forward[columns.index("steps")] == 2 and forward[columns.index("trials")] == 1
    assert forward[columns.index("median_ms")] == 4.0
    assert forward[columns.index("median_host_ms")] == 4.5
    assert backward[columns.index("median_ms")] == 7.0
    assert forward[columns.index("share_pct")] == round(100 * 4 / 15, 1)
    assert by_phase["loss"][columns.index("share_pct")] == round(100 * 1 / 15, 1)


def test_an_empty_bucket_gives_empty_views_with_every_column(store):
    con = connect(store)
    for view in ("sweeps", "trials", "steps"):
        assert count(con, view) == 0
        assert [d[0] for d in con.execute(f"select * from {view} limit 0").description] == TABLES[view].names


def test_steps_without_a_trials_row_are_invisible(store, write, rows):
    write.trial("s1", "t1", {"forward": [2.0]})
    # An interrupted write: the steps object landed, its committing trials row did not.
    store.write("steps", "s1", "t2", rows.steps("s1", "t2", {"forward": [9.0]}))
    con = connect(store)
    assert count(con, "raw_steps") == 12
    assert con.execute("select distinct trial_id from steps").fetchall() == [("t1",)]
    assert con.execute("select distinct trial_id from step_totals").fetchall() == [("t1",)]


def test_rewriting_a_trial_replaces_it(store, write):
    write.trial("s1", "t1", {"forward": [2.0, 2.0]}, status="failed", error="boom")
    write.trial("s1", "t1", {"forward": [3.0, 3.0, 3.0]})  # the retry, same trial id
    con = connect(store)
    assert con.execute("select trial_id, status, error from trials").fetchall() == [("t1", "ok", None)]
    assert count(con, "steps") == 3 * 6
    assert con.execute("select distinct duration_ms from steps where phase = 'forward'").fetchall() == [(3.0,)]


def test_an_unfinished_upload_is_not_read(store, write, rows, s3_server, s3_bucket):
    write.trial("s1", "t1")
    # A writer that died mid-upload: the parts are on the server, the object is not.
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([rows.trial("s1", "t2")], schema=TABLES["trials"]), buf)
    key = "results/trials/sweep_id=s1/t2.parquet"
    upload = s3_server.client.create_multipart_upload(Bucket=s3_bucket, Key=key)
    s3_server.client.upload_part(
        Bucket=s3_bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=buf.getvalue()
    )
    con = connect(store)
    assert con.execute("select trial_id from trials").fetchall() == [("t1",)]


def test_a_bad_uri_is_a_store_error():
    with pytest.raises(StoreError, match=r"^store foo://x: "):
        connect("foo://x")


def test_objects_that_do_not_fit_are_skipped_with_a_warning_as_on_a_local_store(store, write):
    # The same rule as a local store (stepscope.storage.layout): a copy under another
    # name, a zero-byte object and a hidden one are not read; the first two are named.
    write.sweep("s1")
    write.trial("s1", "t1", {"forward": [2.0, 3.0]}, warmup=0)
    fs, root = store.filesystem()
    partition = f"{root}/trials/sweep_id=s1"
    with fs.open_input_stream(f"{partition}/t1.parquet") as f:
        data = f.read()
    for name, body in (("t1 copy.parquet", data), ("empty.parquet", b""), ("._t1.parquet", data)):
        with fs.open_output_stream(f"{partition}/{name}") as f:
            f.write(body)
    with pytest.warns(UserWarning) as caught:
        con = connect(store.location)
    assert count(con, "trials") == 1
    assert sorted(str(w.message).split(": ")[0] for w in caught) == [
        f"skipped {partition}/empty.parquet", f"skipped {partition}/t1 copy.parquet"]
    assert [r["trial_id"] for r in store.read_rows("trials", ["trial_id"])] == ["t1"]
