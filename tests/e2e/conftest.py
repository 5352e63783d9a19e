"""End-to-end helpers: run the real `stepscope` command in a subprocess, as a user would."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


@pytest.fixture
def stepscope(tmp_path):
    """stepscope(*args, timeout=...) -> CompletedProcess, run in tmp_path."""

    def run(*args: str, timeout: float = 300, check_rc: int | None = None, env: dict | None = None):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        env.pop("RAY_ADDRESS", None)
        env.pop("STEPSCOPE_STORE", None)
        proc = subprocess.run(
            [sys.executable, "-m", "stepscope", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
        )
        if check_rc is not None:
            assert proc.returncode == check_rc, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
        return proc

    return run


ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "local-cluster.sh"


@dataclass(frozen=True)
class LocalCluster:
    """A head and two fake-GPU workers (A100, H100) started by deploy/local-cluster.sh."""

    port: int
    directory: str
    env: dict  # what a driver on this host needs (token authentication stays on)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def client_address(self) -> str:
        return f"ray://127.0.0.1:{self.port + 7}"

    @property
    def jobs_address(self) -> str:
        return f"http://127.0.0.1:{self.port + 8}"

    def node_pids(self) -> dict[str, int]:
        lines = Path(self.directory, "nodes").read_text().split("\n")
        return {name: int(pid) for name, pid in (ln.split() for ln in lines if ln.strip())}


def _free_port_block(size: int = 40) -> int:
    """A port whose next `size` ports are free too, below the ephemeral range."""
    for _ in range(200):
        base = random.randrange(20000, 32000 - size)
        try:
            for p in range(base, base + size):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return base
    raise RuntimeError("no free block of ports")


@pytest.fixture
def free_port_block():
    """`_free_port_block` for a test that starts its own local cluster."""
    return _free_port_block


@contextmanager
def local_cluster_up(node_env: dict | None = None, dashboard: bool = False):
    """`node_env`: the environment its nodes (and so their workers) start with, instead of
    this process's; for a cluster whose nodes lack what a driver has. `dashboard`: the head
    runs Ray's dashboard and so its job server, which `stepscope submit` and `jobs` need;
    without it the cluster starts with a dozen fewer processes."""
    port = _free_port_block()
    directory = f"/tmp/ssc-{port}"
    env = {**(os.environ if node_env is None else node_env), "STEPSCOPE_LOCAL_PORT": str(port),
           "STEPSCOPE_LOCAL_DIR": directory, "STEPSCOPE_LOCAL_DASHBOARD": "1" if dashboard else "0"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    up = subprocess.run(["bash", str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=240)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield LocalCluster(port, directory, {"RAY_AUTH_MODE": "token"})
    finally:
        subprocess.run(["bash", str(SCRIPT), "down"], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def local_cluster():
    """The module's cluster, with the job server: its tests submit jobs too."""
    with local_cluster_up(dashboard=True) as cluster:
        yield cluster


@pytest.fixture
def fresh_cluster():
    """A cluster of its own, for a test that breaks it."""
    with local_cluster_up() as cluster:
        yield cluster


@pytest.fixture
def start_local_cluster():
    """`with start_local_cluster(node_env) as cluster:` a cluster of its own, its nodes
    started with `node_env` (for nodes that lack what the driver has)."""
    return local_cluster_up
