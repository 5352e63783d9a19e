"""A store every node can write, known before the first trial: `run` has each node that
may run a trial write and delete a probe object, and stops with one line naming the node
when one cannot. Real Ray, a real S3 API (moto on loopback); the nodes lack what the
driver has: the driver finds the store's endpoint in its environment
(AWS_ENDPOINT_URL_S3, as the AWS SDKs read it), the nodes' environment points elsewhere."""

from __future__ import annotations

import logging
import os
import shlex
import socket

import pytest

from stepscope.storage.store import Store, probe_write

pytestmark = pytest.mark.slow

SPEC = """
name: reach
isolation: reuse
fixed: {workload: mlp, depth: 1, width: 8, input_dim: 8, iterations: 2, warmup: 0}
grid: {batch_size: [4, 8]}
"""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_probe_names_the_node_that_cannot_write(s3_server, s3_bucket, monkeypatch):
    """An embedded Ray whose workers get another endpoint than the driver (a job's runtime_env)."""
    import ray

    from stepscope.orchestrator import cluster
    from stepscope.orchestrator.options import option_of
    from stepscope.orchestrator.scheduler import SchedulerError, check_store_writable

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    workers = {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{closed_port()}"}
    ray.init(address="local", include_dashboard=False, runtime_env={"env_vars": workers},
             logging_level=logging.WARNING, log_to_driver=False)
    try:
        nodes = cluster.alive_nodes(ray)
        driver_ip = ray.util.get_node_ip_address()
        store = Store(f"s3://{s3_bucket}/results?region=us-east-1")
        probe_write(store, "driver")  # the driver can write it
        with pytest.raises(SchedulerError) as err:
            check_store_writable(ray, store, nodes, driver_ip)
        message = str(err.value)
        (node,) = nodes
        assert message.startswith(
            f"store {store.location}: node {node.node_id[:12]} ({node.ip}): cannot write {s3_bucket}/results/_probe/"
        ), message
        assert "Could not connect to server" in message and message.endswith("nothing was run")
        assert "\n" not in message
        # The probe's StoreError crossed Ray with its field: the CLI still prints `--store`.
        assert err.value.render(option_of) == f"--{message}"
        # The endpoint in the URI itself reaches every node.
        check_store_writable(ray, Store(s3_server.uri(s3_bucket)), nodes, driver_ip)
    finally:
        ray.shutdown()
    assert s3_server.keys(s3_bucket) == ["results/_probe/"]  # the probes' objects are gone


def test_run_stops_before_any_trial_when_the_nodes_cannot_write(start_local_cluster, write_spec, stepscope, s3_server,
                                                                 s3_bucket):
    """A three-node cluster (deploy/local-cluster.sh) started without the driver's endpoint."""
    spec = write_spec(SPEC)
    nodes_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    nodes_env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_EC2_METADATA_DISABLED="true",
                     AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{closed_port()}")
    with start_local_cluster(nodes_env) as cluster:
        driver_env = {**cluster.env, "AWS_ENDPOINT_URL_S3": s3_server.endpoint}
        uri = f"s3://{s3_bucket}/results?region=us-east-1"
        run = stepscope("run", spec, "--address", cluster.address, "--store", uri, env=driver_env, check_rc=2)
        last = run.stderr.strip().splitlines()[-1]
        assert last.startswith(f"Error: --store {uri}: node "), run.stderr[-3000:]
        assert "cannot write" in last and "1 more node(s) fail too" in last  # the two GPU nodes
        assert "results in" not in run.stdout and "sweep " not in run.stderr
        assert s3_server.keys(s3_bucket) == [], "nothing was submitted, not even the sweep's row"

        # With the endpoint in the URI every node writes; the hint pastes back as it was given.
        reachable = s3_server.uri(s3_bucket)
        run = stepscope("run", spec, "--address", cluster.address, "--store", reachable, env=driver_env, check_rc=0)
        hint = next(ln for ln in run.stdout.splitlines() if ln.startswith("results in "))
        assert shlex.split(hint.split("; try: ", 1)[1]) == ["stepscope", "query", "phase_shares", "--store", reachable]
        rows = stepscope("sql", "select status, gpu is null from trials", "--store", reachable, "--format", "csv",
                         env=driver_env, check_rc=0)
        assert rows.stdout.splitlines()[1:] == ["ok,True", "ok,True"]
