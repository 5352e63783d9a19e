"""A result file appears whole or not at all, even when the writer is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from stepscope.storage.store import Store, StoreError, resolve_store


def step_rows(n: int, trial_id: str = "t") -> list[dict]:
    return [
        {"sweep_id": "s", "trial_id": trial_id, "iteration": i, "is_warmup": False, "phase": "data",
         "phase_index": 0, "duration_ms": float(i), "host_ms": float(i),
         "gpu_gap_ms": None, "peak_rss_bytes": None, "peak_allocated_bytes": None, "peak_reserved_bytes": None, "alloc_retries": None}
        for i in range(n)
    ]


def test_write_is_strict_about_columns(tmp_path):
    rows = step_rows(2)
    del rows[1]["host_ms"]
    with pytest.raises(ValueError, match=r"steps row 1: missing columns \['host_ms'\]"):
        Store(str(tmp_path)).write("steps", "s", "t", rows)
    assert not list(tmp_path.rglob("*.parquet"))


def test_rewrite_replaces_whole_and_leaves_no_temporary(tmp_path):
    st = Store(str(tmp_path))
    st.write("steps", "s", "t", step_rows(3))
    path = st.write("steps", "s", "t", step_rows(5))
    assert pq.read_table(path).num_rows == 5
    assert os.listdir(os.path.dirname(path)) == ["t.parquet"]


def test_store_location_resolution(monkeypatch):
    assert resolve_store("x") == "x"
    monkeypatch.setenv("STEPSCOPE_STORE", "/data/results")
    assert resolve_store(None) == "/data/results"
    monkeypatch.delenv("STEPSCOPE_STORE")
    assert resolve_store(None) == "./stepscope-results"
    with pytest.raises(StoreError):
        Store("")


WRITER = """
import sys
from stepscope.storage.store import Store
rows = [{"sweep_id": "s", "trial_id": "t", "iteration": i, "is_warmup": False, "phase": "data",
         "phase_index": 0, "duration_ms": float(i), "host_ms": float(i),
         "gpu_gap_ms": None, "peak_rss_bytes": None, "peak_allocated_bytes": None, "peak_reserved_bytes": None, "alloc_retries": None} for i in range(400_000)]
st = Store(sys.argv[1])
for k in range(1000):
    st.write("steps", "s", f"t{k}", rows)
"""


@pytest.mark.slow  # a writer process, killed
def test_writer_killed_mid_write_leaves_only_whole_files(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)])
    part = tmp_path / "steps" / "sweep_id=s"
    deadline = time.monotonic() + 60
    try:
        # Kill it while a temporary file is being written (after at least one whole file).
        while time.monotonic() < deadline:
            if part.exists() and any(p.name.endswith(".parquet") for p in part.iterdir()) and any(
                p.name.endswith(".tmp") for p in part.iterdir()
            ):
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    visible = sorted(part.glob("*.parquet"))
    assert visible, "the writer should have finished at least one file"
    for path in visible:
        assert pq.read_table(path).num_rows == 400_000  # every visible file is whole
    hidden = [p.name for p in part.iterdir() if p.name.startswith(".")]
    assert all(name.endswith(".tmp") for name in hidden)


def test_store_errors_name_the_store_as_the_library_does(tmp_path):
    """A Python caller of `Store` reads `store LOCATION: ...`, not of a `--store` it never passed
    (the CLI prints `--store LOCATION: ...`: tests/e2e/test_store_faults.py, tests/orchestrator)."""
    (tmp_path / "afile").write_text("x")
    location = str(tmp_path / "afile" / "s")
    with pytest.raises(StoreError) as caught:
        Store(location).write("steps", "s", "t", step_rows(1))
    message = str(caught.value)
    assert message.startswith(f"store {location}: cannot write {location}/steps/sweep_id=s/t.parquet: "), message
    assert caught.value.field == "store" and "--" not in message
    with pytest.raises(StoreError) as caught:
        resolve_store("")
    assert str(caught.value) == "store: empty store location; give a directory or a URI (or leave store out)"
    with pytest.raises(StoreError) as caught:
        Store("")
    assert str(caught.value) == "store: empty store location; give a directory or a URI"
    root = tmp_path / "st"
    root.mkdir()
    (root / "trials").write_text("x")
    with pytest.raises(StoreError) as caught:
        Store(str(root)).table_files("trials")
    assert str(caught.value) == (f"store {root}: {root}/trials: is not a directory; the store's trials table must be "
                                 "a folder (move the file away, or point store at another directory)")
