"""Shared fixtures: a CLI runner and a helper that writes a spec file."""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[1]

# `python -m pytest` puts the current directory, the repository's root, on sys.path, where
# its folders would import by their bare names (`import workloads`) as they never do for a
# user: stepscope imports as `stepscope` only. Take the root off, so that the tests see
# what users see (a user's own `workloads` package is theirs, and an old-style import fails).
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != ROOT]


#: Folders whose every test starts Ray, a cluster or a `stepscope` subprocess.
SLOW_FOLDERS = ("e2e", "deploy")
#: Fixtures that start a process (moto's S3 server, a local Ray cluster, the CLI in a subprocess).
SLOW_FIXTURES = {"s3_server", "s3_bucket", "s3_store", "stepscope", "local_cluster", "fresh_cluster",
                 "start_local_cluster", "free_port_block"}


def pytest_collection_modifyitems(config, items):
    """The fast subset is `-m "not slow"`: unit tests, no Ray, no subprocess. A test is `slow`
    when its module or itself is marked so, when it sits under tests/e2e or tests/deploy, or when
    it uses a fixture that starts a process. `gpu` tests run only where torch sees CUDA."""
    tests = Path(__file__).parent
    slow = pytest.mark.slow
    for item in items:
        folder = Path(item.path).relative_to(tests).parts[0]
        if folder in SLOW_FOLDERS or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(slow)
        # With pytest-xdist and `--dist loadgroup`, tests go to workers one by one, but a module
        # whose tests share a module-scoped fixture (a local Ray cluster, a built wheel, a
        # rendered report) stays on one worker, so the fixture is made once.
        if _uses_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(Path(item.path).relative_to(tests).as_posix()))
    if getattr(config.option, "numprocesses", None):
        # Several workers: the slow tests first (a stable sort keeps each module's order), so
        # the workers end together on short tests, not one of them on a two-minute sweep.
        items.sort(key=lambda item: "slow" not in item.keywords)
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _uses_module_fixture(item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.values() if info else ()
    return any(d.scope in ("module", "package", "class") for chain in defs for d in chain)


@pytest.fixture
def cli_runner():
    from stepscope.orchestrator.cli import cli

    runner = CliRunner()

    def invoke(*args: str, env: dict | None = None):
        return runner.invoke(cli, list(args), env=env, catch_exceptions=False)

    return invoke


@pytest.fixture
def write_spec(tmp_path):
    """write_spec(yaml_text, name='spec.yaml', with_modules=('sleepy',)) -> path."""

    def write(text: str, name: str = "spec.yaml", with_modules: tuple[str, ...] = ()) -> str:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        for mod in with_modules:
            shutil.copy(FIXTURES / f"{mod}.py", tmp_path / f"{mod}.py")
        return str(path)

    return write


@pytest.fixture(autouse=True)
def _no_store_env(monkeypatch):
    monkeypatch.delenv("STEPSCOPE_STORE", raising=False)
    if "RAY_ADDRESS" in os.environ:
        monkeypatch.delenv("RAY_ADDRESS")


# ---------------------------------------------------------------- S3 (moto server)

# A real S3 API on loopback: moto's server in a child process, so that its request
# handling never competes with the test process (DuckDB, pyarrow) for the GIL. It
# prints its port (the OS picks a free one), then serves until its stdin closes:
# when the session ends, or when pytest itself dies.
_MOTO_SERVER = """
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""

S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


class S3Server:
    """The session's moto S3 server: `uri(bucket)` is a store URI for it."""

    region = "us-east-1"

    def __init__(self, port: int):
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self._client = None

    def uri(self, bucket: str, prefix: str = "results", **options: str) -> str:
        """s3://BUCKET/PREFIX?endpoint_override=127.0.0.1:PORT&scheme=http&region=us-east-1[&...]"""
        query = {"endpoint_override": f"127.0.0.1:{self.port}", "scheme": "http", "region": self.region, **options}
        return f"s3://{bucket}/{prefix}?" + "&".join(f"{k}={v}" for k, v in query.items())

    @property
    def client(self):
        """A boto3 S3 client for the server: to look at what is stored (and what is not yet)."""
        if self._client is None:
            import boto3

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint,
                region_name=self.region,
                aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            )
        return self._client

    def keys(self, bucket: str) -> list[str]:
        """Every object key in the bucket (complete objects only: that is all S3 lists)."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def uploads(self, bucket: str) -> list[dict]:
        """Multipart uploads begun and neither completed nor aborted."""
        return self.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One moto S3 server on 127.0.0.1 (a free port) for the whole session."""
    import subprocess
    import sys

    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _MOTO_SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, **S3_CREDENTIALS},
        )
    try:
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            proc.kill()
            proc.wait()
            pytest.fail(f"moto S3 server did not start: {log.read_text()[-2000:]}")
        yield S3Server(int(line))
    finally:
        proc.stdin.close()  # the server's cue to stop
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """A fresh, empty bucket on the session's S3 server; its name. Credentials for it are in
    the environment (for pyarrow, and for any subprocess) for the length of the test."""
    import uuid

    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    bucket = f"stepscope-{uuid.uuid4().hex[:12]}"
    s3_server.client.create_bucket(Bucket=bucket)
    yield bucket
    # Free the server's memory: objects, unfinished uploads, then the bucket.
    client = s3_server.client
    for upload in s3_server.uploads(bucket):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    for key in s3_server.keys(bucket):
        client.delete_object(Bucket=bucket, Key=key)
    client.delete_bucket(Bucket=bucket)


@pytest.fixture
def s3_store(s3_server, s3_bucket) -> str:
    """A store URI under a fresh bucket on the session's moto S3 server."""
    return s3_server.uri(s3_bucket)
