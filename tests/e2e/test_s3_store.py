"""The `stepscope` command with an s3:// store: a real S3 API (moto's server on loopback,
see tests/conftest.py). In-process through Click's runner: no Ray here."""

from __future__ import annotations

import csv
import io
import socket
import time

import pytest

from stepscope.storage.schema import TABLES
from stepscope.storage.store import Store

pytestmark = pytest.mark.slow

SPEC = """
name: s3t
fixed: {workload: mlp, depth: 1, width: 8, input_dim: 8, iterations: 2, warmup: 0}
grid: {batch_size: [4]}
"""


def test_sql_counts_the_trials_of_an_s3_store(cli_runner, s3_store):
    # Minimal trials rows (the nullable columns left null), written straight through the store.
    st = Store(s3_store)
    for trial_id in ("t1", "t2", "t3"):
        row = {name: None for name in TABLES["trials"].names}
        row.update(
            sweep_id="s1", trial_id=trial_id, trial_index=0, repeat=0, attempt=1, status="ok",
            workload="mlp", batch_size=4, precision="fp32", optimizer="sgd", iterations=1,
            warmup=0, seed=0, params="{}", config_id="c", stepscope_version="0.1.0", schema_version=1,
        )
        st.write("trials", "s1", trial_id, [row])
    result = cli_runner("sql", "select count(*) as n from trials", "--store", s3_store, "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["n", "3"]


def test_trial_writes_to_s3_and_query_shows_it_ok(cli_runner, write_spec, s3_store, s3_server, s3_bucket):
    spec = write_spec(SPEC)
    result = cli_runner("trial", spec, "--index", "0", "--store", s3_store)
    assert result.exit_code == 0, result.output
    assert "ok:" in result.output

    result = cli_runner("query", "trials", "--store", s3_store, "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [(r["trial_index"], r["status"], r["workload"], r["batch_size"]) for r in rows] == [
        ("0", "ok", "mlp", "4")
    ]
    keys = [k for k in s3_server.keys(s3_bucket) if k.endswith(".parquet")]
    trial_id = rows[0]["trial_id"]
    sweep_id = rows[0]["sweep_id"]
    assert keys == sorted(
        [
            f"results/devices/sweep_id={sweep_id}/{trial_id}.parquet",
            f"results/steps/sweep_id={sweep_id}/{trial_id}.parquet",
            f"results/sweeps/sweep_id={sweep_id}/sweep.parquet",
            f"results/trials/sweep_id={sweep_id}/{trial_id}.parquet",
        ]
    )

    # Run again: `trial` continues the latest sweep of this spec in the store and replaces
    # the trial's objects, so there is still one row.
    assert cli_runner("trial", spec, "--index", "0", "--store", s3_store).exit_code == 0
    result = cli_runner("sql", "select count(*) from trials", "--store", s3_store, "--format", "csv")
    assert result.output.splitlines()[1:] == ["1"]


def test_a_missing_bucket_is_one_line_and_exit_2(cli_runner, write_spec, s3_server, s3_bucket):
    spec = write_spec(SPEC)
    uri = s3_server.uri("no-such-bucket-here")
    result = cli_runner("trial", spec, "--index", "0", "--store", uri)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()  # stdout and stderr together
    assert len(lines) == 1 and lines[0].startswith(f"Error: --store {uri}: cannot write ")
    assert "Bucket 'no-such-bucket-here' not found" in lines[0]
    assert "Traceback" not in result.output


def test_an_unknown_scheme_is_one_line_and_exit_2(cli_runner):
    result = cli_runner("sql", "select 1", "--store", "foo://x")
    assert result.exit_code == 2
    assert result.output.strip() == "Error: --store foo://x: Unrecognized filesystem type in URI: foo://x"


@pytest.fixture
def aws_env(monkeypatch):
    """Credentials in the environment (and no instance-metadata lookups), as a user has them."""
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_port():
    """A loopback port that accepts connections and never answers (a hung endpoint): the
    kernel completes the handshake for the listen backlog, nobody reads the request."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield s.getsockname()[1]


@pytest.mark.parametrize(("endpoint", "within_s"), [("closed", 15), ("silent", 20)])
def test_an_unreachable_endpoint_fails_in_seconds_with_one_line(endpoint, within_s, request, cli_runner, aws_env):
    """Before the timeouts and bounded retries, a silent endpoint took 100 s to fail."""
    port = closed_port() if endpoint == "closed" else request.getfixturevalue("silent_port")
    uri = f"s3://bucket/x?endpoint_override=127.0.0.1:{port}&scheme=http"
    t0 = time.monotonic()
    result = cli_runner("sql", "select 1", "--store", uri)
    took = time.monotonic() - t0
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: --store {uri}: "), result.output
    assert ("Could not connect" if endpoint == "closed" else "Timeout was reached") in lines[0]
    assert took < within_s, f"{took:.1f} s"
