"""An s3:// store, against a real S3 API (moto's server on loopback, see tests/conftest.py):
objects appear whole or not at all, even when the writer is killed mid-upload."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from stepscope.storage.store import Store, StoreError

ROOT = Path(__file__).resolve().parents[2]


def step_rows(n: int, trial_id: str = "t") -> list[dict]:
    return [
        {"sweep_id": "s", "trial_id": trial_id, "iteration": i, "is_warmup": i == 0, "phase": "data",
         "phase_index": 0, "duration_ms": i + 0.25, "host_ms": i + 0.5,
         "gpu_gap_ms": None, "peak_rss_bytes": None, "peak_allocated_bytes": None, "peak_reserved_bytes": None, "alloc_retries": None}
        for i in range(n)
    ]


def test_write_reads_back_exactly(s3_server, s3_bucket):
    st = Store(s3_server.uri(s3_bucket, "some/prefix"))
    fs, root = st.filesystem()
    assert root == f"{s3_bucket}/some/prefix"
    path = st.write("steps", "s", "t", step_rows(3))
    assert path == f"{s3_bucket}/some/prefix/steps/sweep_id=s/t.parquet"
    assert pq.read_table(path, filesystem=fs).to_pylist() == step_rows(3)
    data = [k for k in s3_server.keys(s3_bucket) if k.endswith(".parquet")]
    assert data == ["some/prefix/steps/sweep_id=s/t.parquet"]
    assert s3_server.uploads(s3_bucket) == []


def test_rewrite_replaces_the_object(s3_server, s3_bucket):
    st = Store(s3_server.uri(s3_bucket))
    st.write("steps", "s", "t", step_rows(3))
    path = st.write("steps", "s", "t", step_rows(5))
    fs, _ = st.filesystem()
    assert pq.read_table(path, filesystem=fs).num_rows == 5
    assert [k for k in s3_server.keys(s3_bucket) if k.endswith(".parquet")] == [
        "results/steps/sweep_id=s/t.parquet"
    ]


@pytest.mark.parametrize("uri", ["foo://x", "s3://", "s3:///prefix"])
def test_bad_uri_is_one_line_naming_store(uri):
    with pytest.raises(StoreError) as err:
        Store(uri).write("steps", "s", "t", step_rows(1))
    message = str(err.value)
    assert message.startswith(f"store {uri}: ") and "\n" not in message


def test_missing_bucket_is_a_store_error(s3_server, s3_bucket):
    uri = s3_server.uri("no-such-bucket-here")
    with pytest.raises(StoreError) as err:
        Store(uri).write("steps", "s", "t", step_rows(1))
    message = str(err.value)
    assert message.startswith(f"store {uri}: cannot write no-such-bucket-here/results/steps/")
    assert "no-such-bucket-here" in message and "not found" in message and "\n" not in message
    assert "no-such-bucket-here" not in {b["Name"] for b in s3_server.client.list_buckets()["Buckets"]}


# Incompressible 2 kB `phase` strings make each steps object ~40 MB from 20k rows (cheap
# to build), so pyarrow uploads it in several 10 MB parts: a multipart upload that S3
# shows as an object only when CompleteMultipartUpload succeeds.
ROWS = 20_000
WRITER = f"""
import os, sys
from stepscope.storage.store import Store
rows = [{{"sweep_id": "s", "trial_id": "t", "iteration": i, "is_warmup": False,
          "phase": os.urandom(1000).hex(), "phase_index": 0, "duration_ms": float(i),
          "host_ms": float(i), "gpu_gap_ms": None, "peak_rss_bytes": None, "peak_allocated_bytes": None, "peak_reserved_bytes": None, "alloc_retries": None}} for i in range({ROWS})]
st = Store(sys.argv[1])
for k in range(1000):
    st.write("steps", "s", f"t{{k:03d}}", rows)
"""


@pytest.mark.slow
def test_writer_killed_mid_upload_leaves_only_whole_objects(s3_server, s3_bucket):
    uri = s3_server.uri(s3_bucket)
    prefix = "results/steps/sweep_id=s/"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, uri], cwd=ROOT)
    in_flight = None
    deadline = time.monotonic() + 60
    try:
        # Kill it once a part of an object has gone up (and at least one whole object before it).
        while time.monotonic() < deadline and proc.poll() is None:
            done = [k for k in s3_server.keys(s3_bucket) if k.endswith(".parquet")]
            uploads = s3_server.uploads(s3_bucket) if done else []
            if uploads:
                up = uploads[0]
                parts = s3_server.client.list_parts(Bucket=s3_bucket, Key=up["Key"], UploadId=up["UploadId"])
                if parts.get("Parts"):
                    proc.send_signal(signal.SIGKILL)
                    in_flight = up["Key"]
                    break
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the writer should have been killed, not finished"
    assert in_flight is not None, "never saw an upload in flight"

    visible = [k for k in s3_server.keys(s3_bucket) if k.endswith(".parquet")]
    assert visible, "the writer should have finished at least one object"
    assert all(k.startswith(prefix) for k in visible)
    # The killed upload never completes: it stays an unfinished multipart upload, not an object.
    assert in_flight not in visible
    assert in_flight in {u["Key"] for u in s3_server.uploads(s3_bucket)}
    fs, _ = Store(uri).filesystem()
    for key in visible:
        table = pq.read_table(f"{s3_bucket}/{key}", filesystem=fs, columns=["iteration"])
        assert table.num_rows == ROWS  # every visible object is whole
        assert table.column("iteration")[-1].as_py() == ROWS - 1


def test_s3_requests_are_bounded_and_the_uri_options_kept(s3_server, s3_bucket):
    from stepscope.storage import store as store_module

    uri = s3_server.uri(s3_bucket, "p", allow_bucket_creation="true")
    fs, root = Store(uri).filesystem()
    _, (options,) = fs.__reduce__()
    assert (root, options["endpoint_override"], options["scheme"], options["region"], options["allow_bucket_creation"]) == (
        f"{s3_bucket}/p", f"127.0.0.1:{s3_server.port}", "http", "us-east-1", True)
    assert options["connect_timeout"] == store_module.S3_CONNECT_TIMEOUT_S
    assert options["request_timeout"] == store_module.S3_REQUEST_TIMEOUT_S


def test_probe_write_writes_and_deletes_a_hidden_object(s3_server, s3_bucket):
    from stepscope.storage.store import probe_write

    path = probe_write(Store(s3_server.uri(s3_bucket)), "node-1")
    assert path == f"{s3_bucket}/results/_probe/node-1"
    # Gone; pyarrow leaves the folder's empty marker object, as it does for every folder it empties.
    assert s3_server.keys(s3_bucket) == ["results/_probe/"] and s3_server.uploads(s3_bucket) == []
    uri = s3_server.uri("no-such-bucket-here")
    with pytest.raises(StoreError) as err:
        probe_write(Store(uri), "node-1")
    assert str(err.value).startswith(f"store {uri}: cannot write no-such-bucket-here/results/_probe/node-1: ")
    assert "\n" not in str(err.value)
