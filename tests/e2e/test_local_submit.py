"""The "Try it on one machine" block of docs/cluster.md, run as written: `deploy/local-cluster.sh up`,
a sweep run from here, the same sweep submitted to the cluster's job server, a query, `down`.

Only the ports and the store change: the block's 127.0.0.1:26379 (the script's default
port) and its job server become a free block of ports (the tests may run beside a cluster on
the default ones), and /tmp/results a folder of the test's own. `down` runs whatever happens."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stepscope.analysis.warehouse import connect

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "docs" / "cluster.md"  # where the README's cluster section lives
SCRIPT = ROOT / "deploy" / "local-cluster.sh"


def readme_block() -> str:
    text = README.read_text()
    start = text.index("```bash\n", text.index("**Try it on one machine.**")) + len("```bash\n")
    return text[start : text.index("```", start)]


def test_the_readme_block_runs_as_written_submit_included(tmp_path, free_port_block):
    block = readme_block()
    assert "stepscope submit " in block and block.startswith("deploy/local-cluster.sh up")
    gcs = re.search(r"--address (127\.0\.0\.1:(\d+))", block)
    jobs = re.search(r"--address (http://127\.0\.0\.1:(\d+))", block)
    assert gcs and jobs, block
    default_port = re.search(r"PORT=\$\{STEPSCOPE_LOCAL_PORT:-(\d+)\}", SCRIPT.read_text()).group(1)
    assert gcs.group(2) == default_port, "docs/cluster.md's address is not the script's default"

    port = free_port_block()
    store = tmp_path / "results"
    ours = {gcs.group(1): f"127.0.0.1:{port}", jobs.group(1): f"http://127.0.0.1:{port + int(jobs.group(2)) - int(gcs.group(2))}",
            "/tmp/results": str(store)}
    for theirs, mine in ours.items():
        block = block.replace(theirs, mine)
    env = {**os.environ, "STEPSCOPE_LOCAL_PORT": str(port), "STEPSCOPE_LOCAL_DIR": f"/tmp/ssc-{port}",
           "PYTHONUNBUFFERED": "1", "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "STEPSCOPE_STORE", "STEPSCOPE_LOCAL_DASHBOARD", "RAY_AUTH_MODE"):
        env.pop(name, None)  # as a new user's shell: the block must set what it needs
    try:
        proc = subprocess.run(["bash", "-e", "-c", block], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=400)
    finally:
        subprocess.run(["bash", str(SCRIPT), "down"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    # `up` printed the addresses the block uses (with the README's own port, the README's).
    printed = dict(re.findall(r"stepscope (run|submit) SPEC --address (\S+)", proc.stdout))
    assert printed == {"run": ours[gcs.group(1)], "submit": ours[jobs.group(1)]}, proc.stdout
    assert "job raysubmit_" in proc.stderr and ": SUCCEEDED" in proc.stderr, proc.stderr[-3000:]

    # Two sweeps of examples/compare-gpus.yaml (4 configurations on each of the 2 fake GPU
    # types), one run from here, one submitted; the query shows the latest, compare puts the
    # two GPU types side by side in it.
    rows = connect(str(store)).execute(
        "select sweep_id, count(*) filter (where status = 'ok'), count(*), count(distinct gpu_model) "
        "from trials group by all"
    ).fetchall()
    assert sorted(r[1:] for r in rows) == [(8, 8, 2), (8, 8, 2)], rows
    latest = max(r[0] for r in rows)
    queried = [line for line in proc.stdout.splitlines() if line.startswith(latest + ",")]
    assert len(queried) == 8, proc.stdout[-3000:]
    assert any("step_ms" in line and "A100" in line and "H100" in line for line in proc.stdout.splitlines()), \
        proc.stdout[-3000:]
