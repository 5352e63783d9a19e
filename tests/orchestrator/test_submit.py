"""`stepscope submit` and `stepscope jobs` before any cluster is involved: the one-line
errors for an address where no job server answers, and the resume command a submitted
sweep prints (a `submit ... --resume` the user runs from their own machine)."""

from __future__ import annotations

import http.server
import shlex
import socket
import threading
from pathlib import Path

import pytest

from stepscope.orchestrator import jobs
from stepscope.orchestrator.commands.run import resume_hint

QUICKSTART = str(Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml")

START_JOB_SERVER = (
    "start the head with its dashboard, which serves the Ray Jobs API: "
    "`ray start --head --include-dashboard=true` (port 8265, or --dashboard-port); "
    "deploy/local-cluster.sh up starts it (unless STEPSCOPE_LOCAL_DASHBOARD=0) and prints its address"
)


def _port_nothing_listens_on() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on return: nothing listens there now


@pytest.fixture
def not_a_job_server():
    """An HTTP server that answers every request with 404, as a web server that is not
    Ray's would; yields its address."""

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("command", [
    ("submit", QUICKSTART, "--store", "/shared/results"),
    ("jobs", "status", "raysubmit_X"),
    ("jobs", "stop", "raysubmit_X"),
])
def test_no_job_server_there_says_how_to_start_one(cli_runner, command):
    where = f"http://127.0.0.1:{_port_nothing_listens_on()}"
    r = cli_runner(*command, "--address", where)
    assert r.exit_code == 2
    assert r.stderr == f"Error: --address {where}: no Ray job server answers there; {START_JOB_SERVER}\n"
    assert jobs.START_JOB_SERVER == START_JOB_SERVER


def test_another_server_on_that_port_is_not_taken_for_a_job_server(cli_runner, not_a_job_server):
    r = cli_runner("submit", QUICKSTART, "--store", "/shared/results", "--address", not_a_job_server)
    assert r.exit_code == 2
    assert r.stderr == (
        f"Error: --address {not_a_job_server}: this port answers, but not as a Ray job server (a GCS or "
        "Ray Client port?); give the dashboard's address, http://HEAD:8265 unless the head was started "
        "with another --dashboard-port\n"
    )


def test_a_gcs_address_is_not_a_job_server_address(cli_runner):
    r = cli_runner("submit", QUICKSTART, "--store", "/shared/results", "--address", "127.0.0.1:26379")
    assert r.exit_code == 2
    assert r.stderr == ("Error: --address 127.0.0.1:26379: give the cluster's job server, e.g. "
                        "http://HEAD:8265 (or set RAY_API_SERVER_ADDRESS)\n")


def test_the_resume_command_is_a_submit_of_the_users_own_spec_and_store():
    spec = "my sweeps/it's.yaml"  # a space and a quote: the shell must get it back whole
    command = jobs.resume_command(spec, "http://head:8265", "s3://bucket/res?region=eu-west-1", 30.0)
    assert command == ("stepscope submit 'my sweeps/it'\"'\"'s.yaml' --address http://head:8265 "
                       "--store 's3://bucket/res?region=eu-west-1' --trial-timeout 30 --resume")
    assert shlex.split(command) == ["stepscope", "submit", spec, "--address", "http://head:8265", "--store",
                                    "s3://bucket/res?region=eu-west-1", "--trial-timeout", "30", "--resume"]
    assert jobs.resume_command("a.yaml", "http://h:1", "/s", None) == "stepscope submit a.yaml --address http://h:1 --store /s --resume"


def test_a_submitted_driver_prints_the_submit_command_not_its_working_copy(monkeypatch):
    # Outside a job: the `run` that resumes, as the user typed the spec and store.
    monkeypatch.delenv(jobs.RESUME_COMMAND_ENV, raising=False)
    assert resume_hint("sweeps/a b.yaml", "/tmp/res") == "stepscope run 'sweeps/a b.yaml' --resume --store /tmp/res"
    assert resume_hint("a.yaml", None) == "stepscope run a.yaml --resume"
    # Inside the job `stepscope submit` made: the command it left in the job's environment.
    submitted = "stepscope submit 'my sweep.yaml' --address http://head:8265 --store /shared/res --resume"
    monkeypatch.setenv(jobs.RESUME_COMMAND_ENV, submitted)
    assert resume_hint("my sweep.yaml", "/shared/res") == submitted
