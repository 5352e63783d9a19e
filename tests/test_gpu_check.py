"""bench/gpu_check.py on its CPU twin: the same trials, rows and checks as on a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402


def test_the_cpu_twin_passes_and_a_wrong_figure_fails_it(tmp_path):
    """Run as on the GPU image: no Ray, no DuckDB (importing either fails)."""
    store = tmp_path / "store"
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for module in ("ray", "duckdb"):
        (blocked / f"{module}.py").write_text(f"raise ImportError('{module} is not on the GPU image')\n")
    env = {**os.environ, "STEPSCOPE_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(blocked), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--quick", "--no-tests",
         "--keep", str(store)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "gpu check: passed"
    rows = [ln.split() for ln in lines if ln.lstrip().startswith("mlp")]
    assert sorted(r[1] for r in rows) == ["amp_bf16", "fp32", "tf32"]
    assert all(r[-1] == "ok" and r[8] == "exact" for r in rows)
    (fork,) = [ln for ln in lines if ln.startswith("fork server:")]
    assert fork.endswith(": ok"), fork

    # The same store with one figure off: the check names it.
    path = sorted((store / "trials").glob("*/*.parquet"))[0]
    table = pq.read_table(path)
    row = table.to_pylist()[0]
    row["optimizer_state_bytes"] += 4
    pq.write_table(table.from_pylist([row], schema=table.schema), path)
    _, failures = gpu_check.check(store, "cpu")
    assert len(failures) == 1 and "are not 4N/4N/8N" in failures[0]
