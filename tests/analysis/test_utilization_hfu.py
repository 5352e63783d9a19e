"""The `utilization` query's model and hardware FLOPs, MFU and HFU, and the same query
over a trials file written before recompute was counted apart (no such columns)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from stepscope.analysis.queries import run_query
from stepscope.analysis.warehouse import connect
from stepscope.storage.schema import TRIALS

NEW = ("flops_recompute", "achieved_hardware_tflops", "hfu_datasheet", "hfu_measured")
DURATIONS = {"forward": [4.0], "loss": [1.0], "backward": [8.0]}


def _trial(rows, trial_id: str, **columns) -> dict:
    # Every column of the schema, null unless given: the row builders may lag the schema.
    base = rows.trial("s1", trial_id, flops_forward=10**9, flops_backward=2 * 10**9, achieved_tflops=0.15,
                      peak_tflops_measured=0.5, mfu_measured=0.3)
    return {name: None for name in TRIALS.names} | base | columns


def _utilization(store) -> list[dict]:
    names, values = run_query(connect(store), "utilization", {})
    return [dict(zip(names, row, strict=True)) for row in values]


def test_hfu_beside_mfu_with_the_recompute_counted_apart(store, rows, write):
    # Model FLOPs 3e9 per step, recompute 1e9: hardware 4e9. The mean step is 20 ms, so
    # 0.15 and 0.2 TFLOP/s; against a 0.5 TFLOP/s peak, MFU 0.3 and HFU 0.4.
    write.sweep("s1")
    row = _trial(rows, "t1", flops_recompute=10**9, achieved_hardware_tflops=0.2, hfu_measured=0.4)
    store.write_trial("s1", "t1", row, rows.steps("s1", "t1", DURATIONS))
    (got,) = _utilization(store)
    assert (got["gflops_per_step"], got["recompute_gflops_per_step"]) == (3.0, 1.0)
    assert (got["step_tflops"], got["hardware_step_tflops"]) == (0.15, 0.2)
    assert (got["mfu_measured"], got["hfu_measured"]) == (0.3, 0.4)
    assert got["backward_tflops"] == 0.25  # the backward proper, 2e9 FLOP / 8 ms: no recompute
    assert got["mfu_datasheet"] is None and got["hfu_datasheet"] is None


def test_a_trials_file_from_before_the_new_columns_still_reads(store, rows, write):
    write.sweep("s1")
    row = _trial(rows, "old")
    store.write_trial("s1", "old", row, rows.steps("s1", "old", DURATIONS))
    # Rewrite its trials file as an older version wrote it: without the new columns.
    old_schema = pa.schema([f for f in TRIALS if f.name not in NEW])
    old_row = {k: v for k, v in row.items() if k not in NEW}
    pq.write_table(pa.Table.from_pylist([old_row], schema=old_schema),
                   f"{store.local_root}/trials/sweep_id=s1/old.parquet")
    assert set(NEW).isdisjoint(pq.read_schema(f"{store.local_root}/trials/sweep_id=s1/old.parquet").names)
    (got,) = _utilization(store)
    assert (got["gflops_per_step"], got["step_tflops"], got["mfu_measured"]) == (3.0, 0.15, 0.3)
    assert got["recompute_gflops_per_step"] is None and got["hardware_step_tflops"] is None
    assert got["hfu_measured"] is None
