"""stepscope.analysis.queries and the named queries in queries/, on hand-made numbers."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

import stepscope.analysis.queries as queries
from stepscope.analysis.queries import (
    QueryError,
    QueryInfo,
    QueryParam,
    bind,
    list_queries,
    run_query,
    run_sql,
)
from stepscope.analysis.warehouse import connect
from stepscope.errors import StepscopeError

NAMED = (
    "backward_forward_ratio", "phase_breakdown", "trials", "memory_breakdown", "memory_phases", "batch_scaling",
)


def records(result: tuple[list[str], list[tuple]]) -> list[dict]:
    columns, rows = result
    return [dict(zip(columns, row, strict=True)) for row in rows]


# -- finding and describing queries -------------------------------------------------------------


def test_list_queries_describes_the_named_queries_and_skips_the_views():
    found = {q.name: q for q in list_queries()}
    assert set(NAMED) <= set(found)
    assert "views" not in found
    for name in NAMED:
        query = found[name]
        first_line = query.path.read_text().splitlines()[0]
        assert query.description and first_line == f"-- {query.description}"
        assert query.parameters == (
            QueryParam("sweep", "latest", "sweep ids or names, comma-separated; 'latest' for the newest sweep; 'all'"),
        )


@pytest.mark.parametrize("name", NAMED)
def test_a_named_query_is_dbt_shaped_with_a_full_header(name):
    text = (queries.sql_dir() / f"{name}.sql").read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("--"))
    assert "param: sweep" in header and "columns:" in header
    assert text.rstrip().endswith("select * from final")


def test_the_sql_directory_of_a_wheel_comes_before_the_checkout(tmp_path, monkeypatch):
    wheel_dir = tmp_path / "analysis" / "sql"
    wheel_dir.mkdir(parents=True)
    (wheel_dir / "views.sql").write_text("-- views\n")
    (wheel_dir / "only_here.sql").write_text("-- Only in the wheel.\nselect 1 as x\n")
    monkeypatch.setattr(
        queries, "_SQL_DIRS", (wheel_dir, Path(queries.__file__).parents[1] / "queries")
    )
    assert [q.name for q in list_queries()] == ["only_here"]
    assert list_queries()[0].description == "Only in the wheel."


def test_a_parameter_without_a_default_must_be_given():
    query = QueryInfo("q", "d", (QueryParam("sweep", None), QueryParam("n", "3")), Path("q.sql"))
    assert bind(query, {"sweep": "s1"}) == {"sweep": "s1", "n": "3"}
    with pytest.raises(
        QueryError, match=r"query q: missing parameter 'sweep'; give it with -p sweep=VALUE"
    ):
        bind(query, {})


# -- errors ---------------------------------------------------------------------------------------


def test_an_unknown_query_lists_the_known_ones(store):
    with pytest.raises(QueryError) as info:
        run_query(connect(store), "phase_brekdown", {})
    message = str(info.value)
    assert message.startswith("unknown query 'phase_brekdown'; known queries: ")
    assert all(name in message for name in NAMED)


def test_an_unknown_parameter_names_it_and_the_known_ones(store):
    with pytest.raises(
        QueryError, match=r"^query trials: unknown parameter 'swep'; known parameters: sweep$"
    ):
        run_query(connect(store), "trials", {"swep": "all"})


def test_a_query_error_is_the_users_to_fix():
    # The CLI turns every StepscopeError into one `Error: ...` line and exit 2.
    assert issubclass(QueryError, StepscopeError) and issubclass(QueryError, RuntimeError)


def test_bad_sql_carries_duckdbs_message(store):
    con = connect(store)
    with pytest.raises(QueryError, match=r'Referenced column "nope" not found'):
        run_sql(con, "select nope from trials")
    with pytest.raises(QueryError, match=r"syntax error"):
        run_sql(con, "selec 1")
    with pytest.raises(QueryError, match=r"Table with name nowhere does not exist"):
        run_sql(con, "select * from nowhere")


def test_run_sql_returns_columns_and_rows(store, write):
    write.trial("s1", "t1")
    con = connect(store)
    assert run_sql(con, "select trial_id, status from trials") == (
        ["trial_id", "status"],
        [("t1", "ok")],
    )
    run_sql(con, "create view mine as select 42 as answer")  # a statement without rows is fine
    assert run_sql(con, "select * from mine") == (["answer"], [(42,)])


# -- phase_breakdown ------------------------------------------------------------------------------

# Step 0 is warmup and far off, so a median that counted it would move.
FORWARD = [100.0, 2.0, 4.0, 6.0]
BACKWARD = [100.0, 4.0, 8.0, 12.0]
OPTIMIZER = [100.0, 3.0, 3.0, 3.0]
DATA = [100.0, 1.0, 1.0, 1.0]
LOSS = [100.0, 1.0, 1.0, 1.0]
TO_DEVICE = [100.0, 1.0, 1.0, 1.0]
STEP = {
    "data": DATA,
    "to_device": TO_DEVICE,
    "forward": FORWARD,
    "loss": LOSS,
    "backward": BACKWARD,
    "optimizer": OPTIMIZER,
}


def test_phase_breakdown_medians_and_shares(store, write):
    write.sweep("s1")
    write.trial("s1", "t1", STEP, warmup=1)
    # Same configuration, but failed: its steps must not count.
    write.trial(
        "s1", "t2", {p: [500.0] * 4 for p in STEP}, warmup=1, trial_index=1, status="failed"
    )
    # Another configuration.
    write.trial("s1", "t3", {"forward": [7.0]}, trial_index=2, batch_size=32)

    got = records(run_query(connect(store), "phase_breakdown", {}))
    first = [r for r in got if r["batch_size"] == 16]
    assert [r["phase"] for r in first] == list(STEP)
    assert [r["phase_index"] for r in first] == [0, 1, 2, 3, 4, 5]
    # Medians of the measured steps: 1, 1, 4, 1, 8, 3 -> a step of 18 ms.
    assert [r["median_ms"] for r in first] == [1.0, 1.0, 4.0, 1.0, 8.0, 3.0]
    assert [r["median_host_ms"] for r in first] == [1.5, 1.5, 4.5, 1.5, 8.5, 3.5]
    assert [r["share_pct"] for r in first] == [5.6, 5.6, 22.2, 5.6, 44.4, 16.7]
    assert sum(r["share_pct"] for r in first) == pytest.approx(100, abs=0.3)
    assert {(r["trials"], r["steps"]) for r in first} == {(1, 3)}
    assert first[0] | {"median_ms": 0, "median_host_ms": 0, "share_pct": 0} == {
        "sweep_id": "s1",
        "workload": "mlp",
        "batch_size": 16,
        "precision": "fp32",
        "optimizer": "sgd",
        "config_id": "c-mlp",
        "gpu_model": None,
        "device_name": "cpu",
        "phase_index": 0,
        "phase": "data",
        "trials": 1,
        "steps": 3,
        "median_ms": 0,
        "median_host_ms": 0,
        "share_pct": 0,
    }
    second = [r for r in got if r["batch_size"] == 32]
    assert [r["median_ms"] for r in second] == [1.0, 1.0, 7.0, 1.0, 1.0, 1.0]
    assert [r["share_pct"] for r in second] == [8.3, 8.3, 58.3, 8.3, 8.3, 8.3]
    assert got == sorted(got, key=lambda r: (r["batch_size"], r["phase_index"]))


def test_phase_shares_one_row_per_configuration(store, write):
    write.sweep("s1")
    write.trial("s1", "t1", STEP, warmup=1, samples_per_s=100.0)
    write.trial("s1", "t2", {p: [500.0] * 4 for p in STEP}, warmup=1, trial_index=1, status="failed")
    write.trial("s1", "t3", {"forward": [7.0]}, trial_index=2, batch_size=32, samples_per_s=50.0)

    got = records(run_query(connect(store), "phase_shares", {}))
    assert [r["batch_size"] for r in got] == [16, 32]
    first, second = got
    # The same medians as phase_breakdown: 1, 1, 4, 1, 8, 3 -> 18 ms.
    assert first["phases_ms"] == 18.0 and first["samples_per_s"] == 100.0
    # Step totals 12, 18, 24 ms: the median step is 18 ms, 16 samples in it 888.9/s.
    assert (first["step_ms_p50"], first["samples_per_s_p50"]) == (18.0, round(16 / 18 * 1000, 1))
    shares = [first[f"{p}_pct"] for p in STEP]
    assert shares == [5.6, 5.6, 22.2, 5.6, 44.4, 16.7]
    assert second["step_ms_p50"] == 12.0 and second["forward_pct"] == 58.3 and second["gpu_model"] is None


def test_phase_breakdown_is_the_median_of_the_repeats_medians(store, write):
    # Trial medians 4, 10 and 20: their median is 10 (the 9 steps pooled would give 8), as
    # step_ms_p50 is the median of the trials' median steps.
    write.sweep("s1")
    write.trial("s1", "r0", {"forward": [2.0, 4.0, 6.0]}, repeat=0)
    write.trial("s1", "r1", {"forward": [8.0, 10.0, 12.0]}, trial_index=1, repeat=1)
    write.trial("s1", "r2", {"forward": [1.0, 20.0, 30.0]}, trial_index=2, repeat=2)
    con = connect(store)
    got = records(run_query(con, "phase_breakdown", {}))
    forward = next(r for r in got if r["phase"] == "forward")
    assert (forward["median_ms"], forward["trials"], forward["steps"]) == (10.0, 3, 9)
    (shares,) = records(run_query(con, "phase_shares", {}))
    assert shares["phases_ms"] == 10.0 + 5 * 1.0  # the other phases take 1 ms every step
    assert shares["step_ms_p50"] == 15.0  # the trials' median steps: 9, 15 and 25


# -- backward_forward_ratio -----------------------------------------------------------------------


def test_backward_forward_ratio(store, write):
    write.sweep("s1")
    write.trial(
        "s1", "t1", {"forward": [50.0, 2.0, 4.0, 6.0], "backward": [1.0, 6.0, 9.0, 12.0]}, warmup=1
    )
    write.trial("s1", "t2", {"forward": [1.0], "backward": [90.0]}, trial_index=1, status="oom")
    write.trial("s1", "t3", {"forward": [4.0], "backward": [2.0]}, trial_index=2, precision="bf16")
    got = records(run_query(connect(store), "backward_forward_ratio", {"sweep": "s1"}))
    assert [
        (r["precision"], r["trials"], r["steps"], r["forward_ms"], r["backward_ms"], r["ratio"])
        for r in got
    ] == [
        ("bf16", 1, 1, 4.0, 2.0, 0.5),
        ("fp32", 1, 3, 4.0, 9.0, 2.25),
    ]


# -- trials ---------------------------------------------------------------------------------------


def test_trials_one_row_per_trial_in_trial_order(store, write, rows):
    write.sweep("s1")
    long_error = "RuntimeError: CUDA out of memory.\nTried to allocate " + "x" * 200
    write.trial("s1", "b", {"forward": [9.0, 3.0, 5.0, 4.0]}, warmup=1, trial_index=1)
    write.trial(
        "s1", "a", None, trial_index=0, status="failed", error=long_error, samples_per_s=None
    )
    # A step cut short (only its first two phases ran) is not a step to take the median of.
    cut = rows.steps("s1", "c", {"forward": [2.0, 2.0, 2.0]})[:-4]
    store.write_trial("s1", "c", rows.trial("s1", "c", trial_index=2, status="oom"), cut)

    got = records(run_query(connect(store), "trials", {}))
    assert [r["trial_id"] for r in got] == ["a", "b", "c"]
    failed, ok, oom = got
    assert failed["status"] == "failed"
    assert len(failed["error"]) == 80 and failed["error"].endswith("…")
    assert failed["error"].startswith("RuntimeError: CUDA out of memory. Tried to allocate xxx")
    assert failed["samples_per_s"] is None
    # Measured steps sum to 3+5, 5+5, 4+5 ms: the median step is 9 ms.
    assert ok["step_ms_p50"] == 9.0 and ok["error"] is None
    assert oom["step_ms_p50"] == 7.0 and oom["steps"] == 2
    assert set(ok) >= {
        "status", "error", "workload", "batch_size", "precision", "gpu", "device_kind",
        "device_name", "host", "samples_per_s", "step_ms_p50", "model_to_device_ms", "param_count",
    }  # fmt: skip
    assert (ok["model_to_device_ms"], ok["param_count"], ok["host"]) == (1.5, 1000, "worker")


# -- which sweep ----------------------------------------------------------------------------------


@pytest.fixture
def two_sweeps(store, write, rows):
    # The newer sweep has the smaller id: 'latest' must go by created_at, not by id.
    write.sweep("z-old", rows.T0)
    write.sweep("a-new", rows.T0 + timedelta(hours=1))
    write.trial("z-old", "t-old", {"forward": [1.0]})
    write.trial("a-new", "t-new", {"forward": [1.0]})
    return connect(store)


@pytest.mark.parametrize("name", NAMED)
@pytest.mark.parametrize(
    ("params", "sweeps"),
    [
        ({}, {"a-new"}),
        ({"sweep": "latest"}, {"a-new"}),
        ({"sweep": "all"}, {"a-new", "z-old"}),
        ({"sweep": "z-old"}, {"z-old"}),
    ],
)
def test_the_sweep_parameter(two_sweeps, name, params, sweeps):
    got = records(run_query(two_sweeps, name, params))
    assert {r["sweep_id"] for r in got} == sweeps


@pytest.mark.parametrize("name", NAMED)
def test_an_unknown_sweep_is_an_error_not_an_empty_answer(two_sweeps, name):
    # Issue 8, item 6: it used to return no rows with exit 0.
    with pytest.raises(QueryError, match=rf"^query {name}: -p sweep=no-such-sweep: no such sweep in the store"):
        run_query(two_sweeps, name, {"sweep": "no-such-sweep"})


def test_queries_over_an_empty_store_return_no_rows_but_their_columns(store):
    con = connect(store)
    for name in NAMED:
        columns, rows = run_query(con, name, {"sweep": "all"})
        assert columns and "sweep_id" in columns and rows == []


def test_configurations_that_differ_beyond_the_usual_columns_stay_apart(store, write):
    """Two depths of one workload, same batch and precision: two configurations, not one."""
    write.sweep("s1")
    write.trial("s1", "t1", {"forward": [2.0]}, config_id="depth-1")
    write.trial("s1", "t2", {"forward": [8.0]}, trial_index=1, config_id="depth-2")
    write.trial("s1", "t3", {"forward": [4.0]}, trial_index=2, config_id="depth-2", seed=1)
    got = records(run_query(connect(store), "phase_shares", {}))
    # depth-2's trials have median steps of 13 and 9 ms: the configuration's is their median.
    assert sorted((r["config_id"], r["step_ms_p50"]) for r in got) == [("depth-1", 7.0), ("depth-2", 11.0)]
    ratios = records(run_query(connect(store), "backward_forward_ratio", {}))
    assert sorted(r["config_id"] for r in ratios) == ["depth-1", "depth-2"]


def test_utilization_rates_and_mfu(store, write):
    write.sweep("s1")
    # forward 4 ms + loss 1 ms per step, backward 8 ms; 1e9 forward and 2e9 backward FLOPs.
    write.trial(
        "s1", "t1", {"forward": [4.0], "loss": [1.0], "backward": [8.0]},
        flops_forward=10**9, flops_backward=2 * 10**9, achieved_tflops=0.15,
        peak_tflops_measured=0.5, mfu_measured=0.3, gpu_variant="H100-SXM-80GB",
        peak_tflops_datasheet=989.4, mfu_datasheet=0.00015,
    )
    write.trial("s1", "t2", {"forward": [4.0]}, trial_index=1, config_id="uncounted")  # no FLOPs: left out
    (row,) = records(run_query(connect(store), "utilization", {}))
    assert row["gflops_per_step"] == 3.0 and row["step_tflops"] == 0.15
    assert row["forward_tflops"] == 0.2  # 1e9 FLOP / 5 ms
    assert row["backward_tflops"] == 0.25  # 2e9 FLOP / 8 ms
    assert (row["mfu_measured"], row["peak_tflops_datasheet"], row["gpu_variant"]) == (0.3, 989.4, "H100-SXM-80GB")


MIB = 2**20


def write_steps(store, rows, sweep_id, trial_id, trial, steps_edit):
    """A trial whose step rows `steps_edit(row)` adjusts (gaps, host times, peaks)."""
    steps = rows.steps(sweep_id, trial_id, {"forward": [1.0, 1.0, 1.0]}, warmup=1)
    for row in steps:
        steps_edit(row)
    store.write_trial(sweep_id, trial_id, trial, steps)


def test_memory_breakdown_of_a_gpu_trial(store, write, rows):
    write.sweep("s1")
    peaks = {"forward": 700, "backward": 900, "optimizer": 800}  # MiB allocated; reserved is 1 GiB

    def edit(row):
        allocated = peaks.get(row["phase"], 600) * MIB
        if row["is_warmup"]:
            allocated *= 2  # warmup peaks (autotuning, first allocations) are left out
        row.update(peak_allocated_bytes=allocated, peak_reserved_bytes=1024 * MIB, peak_rss_bytes=3000 * MIB)

    trial = rows.trial(
        "s1", "t1", device_kind="cuda", device_memory_bytes=80 * 1024 * MIB, param_bytes=4 * MIB,
        grad_bytes=4 * MIB, optimizer_state_bytes=8 * MIB, activation_bytes=50 * MIB,
        cuda_context_bytes=500 * MIB, non_torch_bytes=1024 * MIB, nvml_used_bytes=2048 * MIB,
        nvml_memory_scope="process", alloc_retries=0,
    )
    write_steps(store, rows, "s1", "t1", trial, edit)
    write.trial("s1", "t2", {"forward": [1.0]}, trial_index=1, status="failed")  # not a result: left out
    (row,) = records(run_query(connect(store), "memory_breakdown", {}))
    assert (row["param_mib"], row["grad_mib"], row["optimizer_state_mib"], row["activation_mib"]) == (4, 4, 8, 50)
    assert (row["peak_allocated_mib"], row["peak_reserved_mib"], row["peak_phase"]) == (900, 1024, "backward")
    assert (row["cuda_context_mib"], row["non_torch_mib"], row["nvml_memory_scope"]) == (500, 1024, "process")
    assert row["used_pct"] == 2.5  # (1 GiB reserved + 1 GiB non-torch) / 80 GiB
    assert row["peak_rss_mib"] == 3000 and row["trials"] == 1


def test_memory_phases_gives_each_phase_its_own_peak(store, write, rows):
    write.sweep("s1")

    def edit(row):
        allocated = {"forward": 700, "backward": 900}.get(row["phase"], 600) * MIB
        row.update(peak_allocated_bytes=allocated, peak_reserved_bytes=(allocated + 100 * MIB),
                   peak_rss_bytes=3000 * MIB, alloc_retries=1 if row["phase"] == "backward" else 0)

    trial = rows.trial("s1", "t1", device_kind="cuda", device_memory_bytes=10 * 1024 * MIB,
                       non_torch_bytes=24 * MIB)
    write_steps(store, rows, "s1", "t1", trial, edit)
    got = records(run_query(connect(store), "memory_phases", {}))
    assert [r["phase"] for r in got] == ["data", "to_device", "forward", "loss", "backward", "optimizer"]
    backward = got[4]
    assert (backward["peak_allocated_mib"], backward["peak_reserved_mib"]) == (900, 1000)
    assert backward["alloc_retries"] == 2  # one in each of the two measured steps
    assert backward["used_pct"] == 10.0  # (1000 reserved + 24 non-torch) MiB / 10 GiB
    assert got[0]["alloc_retries"] == 0 and got[0]["used_pct"] == 7.1  # (700 reserved + 24) / 10240


def test_memory_breakdown_on_a_cpu_has_no_allocator_columns(store, write):
    write.sweep("s1")
    write.trial("s1", "t1", {"forward": [1.0]}, param_bytes=4000, activation_bytes=2 * MIB)
    (row,) = records(run_query(connect(store), "memory_breakdown", {}))
    assert row["activation_mib"] == 2 and row["peak_allocated_mib"] is None and row["used_pct"] is None


def test_launch_bound_tells_a_starved_gpu_from_a_busy_one(store, write, rows):
    write.sweep("s1")

    def busy(row):  # the host launches in a tenth of the device's time, no gaps
        row.update(host_ms=row["duration_ms"] / 10, gpu_gap_ms=0.0)

    def starved(row):  # every kernel is done before the next launch: device time follows host time
        row.update(host_ms=row["duration_ms"] * 1.02, gpu_gap_ms=0.5 if row["phase"] == "data" else 0.0)

    for trial_id, batch, edit in (("big", 256, busy), ("small", 2, starved)):
        trial = rows.trial("s1", trial_id, device_kind="cuda", batch_size=batch, config_id=trial_id)
        write_steps(store, rows, "s1", trial_id, trial, edit)
    write.trial("s1", "cpu", {"forward": [1.0]}, config_id="cpu")  # a CPU has no device to wait for
    got = {r["config_id"]: r for r in records(run_query(connect(store), "launch_bound", {}))}
    assert set(got) == {"big", "small"}
    assert got["big"]["launch_bound"] is False and got["big"]["host_device_ratio"] == 0.1
    assert got["small"]["launch_bound"] is True and got["small"]["host_device_ratio"] == 1.02
    # six phases of 1 ms, 0.5 ms idle before each step's data phase
    assert (got["small"]["step_ms_p50"], got["small"]["gap_ms"], got["small"]["idle_pct"]) == (6.0, 0.5, 7.7)
    assert got["small"]["steps"] == 2  # measured steps only
    stricter = records(run_query(connect(store), "launch_bound", {"threshold": "1.05"}))
    assert not any(r["launch_bound"] for r in stricter)


def test_batch_scaling_compares_each_series_with_its_smallest_batch(store, write, rows):
    write.sweep("s1")
    cases = [  # (trial, depth, batch, samples/s, forward ms)
        ("a16", 2, 16, 1000.0, 1.0),
        ("a64", 2, 64, 3000.0, 2.0),
        ("a64r", 2, 64, 3000.0, 2.0),  # a repeat: another seed, the same point
        ("b16", 8, 16, 500.0, 3.0),  # another depth: another series
    ]
    for i, (trial_id, depth, batch, sps, ms) in enumerate(cases):
        params = f'{{"workload": "mlp", "depth": {depth}, "batch_size": {batch}, "seed": {i}}}'
        write.trial("s1", trial_id, {"forward": [ms]}, trial_index=i, batch_size=batch, samples_per_s=sps,
                    params=params, seed=i, config_id=f"c-{depth}-{batch}")  # as the spec hashes it: no seed
    got = records(run_query(connect(store), "batch_scaling", {}))
    assert len({r["series"] for r in got}) == 2
    by_batch = {(r["series"], r["batch_size"]): r for r in got}
    (series_a,) = {r["series"] for r in got if r["batch_size"] == 64}
    row = by_batch[(series_a, 64)]
    assert row["step_ms_p50"] == 7.0  # forward 2 ms + five phases of 1 ms
    # Scaling goes by the median step's throughput: 64 samples in 7 ms against 16 in 6 ms.
    ratio = (64 / 7) / (16 / 6)
    assert (row["trials"], row["samples_per_s"], row["samples_per_s_p50"]) == (2, 3000, round(64 / 7 * 1000, 1))
    assert (row["throughput_x"], row["efficiency_pct"]) == (round(ratio, 2), round(100 * ratio / 4, 1))
    assert by_batch[(series_a, 16)]["throughput_x"] == 1 and by_batch[(series_a, 16)]["efficiency_pct"] == 100


def test_memory_breakdown_peak_phase_is_the_first_to_reach_a_tied_peak(store, rows):
    # A CPU's peak RSS is a high-water mark: from the phase that reached it on, every phase
    # shows it. The peak phase is the first (forward here), however the rows are stored.
    steps = rows.steps("s1", "t1", {"forward": [1.0, 1.0]})
    for r in steps:
        r["peak_rss_bytes"] = 500 if r["phase_index"] >= 2 else 100
    store.write_sweep(rows.sweep("s1"))
    store.write_trial("s1", "t1", rows.trial("s1", "t1"), list(reversed(steps)))
    (got,) = records(run_query(connect(store), "memory_breakdown", {"sweep": "all"}))
    assert got["peak_phase"] == "forward"
