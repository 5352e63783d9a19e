"""A custom workload's spec key that the workload never reads (a typo) is named: in
`trials.unused_params` and as a warning of `stepscope trial` and of `run`'s summary."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from stepscope.workloads.measure.runner import ReadTracker

SPEC = """
name: typo
fixed: {{workload: "sleepy:build", iterations: 1, warmup: 0, batch_size: 2, count_flops: false,
         data_ms: 1, {extra}}}
grid: {{seed: [0]}}
"""


@pytest.mark.parametrize(("extra", "unused"), [("forward_ms: 1", None), ("froward_ms: 1, zzz: 3", "froward_ms,zzz")])
def test_trial_names_the_keys_its_workload_never_read(cli_runner, write_spec, tmp_path, extra, unused):
    spec = write_spec(SPEC.format(extra=extra), with_modules=("sleepy",))
    r = cli_runner("trial", spec, "--index", "0", "--store", str(tmp_path / "s"))
    assert r.exit_code == 0, r.output
    (row,) = pq.read_table(next((tmp_path / "s" / "trials").rglob("*.parquet"))).to_pylist()
    assert row["status"] == "ok" and row["unused_params"] == unused
    warning = "Warning: sleepy:build never read 'froward_ms', 'zzz' from its parameters; a typo in the spec?"
    assert (warning in r.output) is (unused is not None)


def test_reading_every_key_at_once_counts_as_reading_them():
    """`**params`, iteration and .items() hand out every key: none can be called unread."""
    for use in (lambda p: dict(**p), lambda p: list(p), lambda p: list(p.items()), lambda p: p.copy()):
        tracker = ReadTracker({"a": 1, "b": 2})
        use(tracker)
        assert tracker.unread({"a", "b"}) == []
    tracker = ReadTracker({"a": 1, "b": 2, "c": 3})
    tracker["a"], tracker.get("b")
    assert tracker.unread({"a", "b", "c"}) == ["c"]
