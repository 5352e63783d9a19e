"""`stepscope compare`: the statistics against hand-computed cases, and the CLI.

Stores are real Parquet written by the store's own writer; the right values come from the
durations the test wrote (medians by hand, an exact Mann-Whitney p-value by enumerating
every ordering), never from the code under test.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from stepscope.analysis.compare import METRIC_NAMES, MIN_TRIALS, CompareError, compare
from stepscope.analysis.sweeps import SweepError
from stepscope.analysis.warehouse import connect
from stepscope.orchestrator.cli import cli
from stepscope.storage.schema import PHASES
from stepscope.storage.store import Store

FORWARD = [float(v) for v in range(1, 28)]  # 27 measured steps: blocks of ceil(cbrt(27)) = 3, 9 blocks


def durations(scale: float = 1.0, forward=FORWARD) -> dict[str, list[float]]:
    """Every phase 1 ms but forward; the step's total is forward + 5 ms; all times `scale`."""
    return {p: [scale * (v if p == "forward" else 1.0) for v in forward] for p in PHASES}


def add(store: Store, rows, sweep_id: str, trial_id: str, scale: float = 1.0, forward=FORWARD, **trial):
    store.write_trial(sweep_id, trial_id, rows.trial(sweep_id, trial_id, **trial),
                      rows.steps(sweep_id, trial_id, durations(scale, forward)))


@pytest.fixture
def sweep(store, rows):
    store.write_sweep(rows.sweep("s1"))
    return store


def block_medians(totals: list[float]) -> list[float]:
    """Medians of consecutive blocks of L = ceil(cbrt(n)) values, the last taking the rest."""
    n = len(totals)
    length = next(k for k in range(1, n + 1) if k ** 3 >= n)
    count = n // length
    blocks = [totals[i * length:(i + 1) * length] for i in range(count - 1)] + [totals[(count - 1) * length:]]
    return [float(np.median(b)) for b in blocks]


def exact_mann_whitney(a: list[float], b: list[float]) -> float:
    """Two-sided exact p of the Mann-Whitney U statistic, by enumerating every way of
    splitting the pooled samples into groups of len(a) and len(b) (no ties)."""
    pooled = a + b
    def u(x, y):
        return sum(1 for xi in x for yi in y if xi > yi)
    observed = u(b, a)
    counts = []
    for chosen in itertools.combinations(range(len(pooled)), len(b)):
        picked = [pooled[i] for i in chosen]
        rest = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        counts.append(u(picked, rest))
    counts = np.asarray(counts)
    low, high = np.mean(counts <= observed), np.mean(counts >= observed)
    return min(1.0, 2 * min(low, high))


def row(result, metric: str, value: str | None = None, **config) -> dict:
    found = [r for r in result.rows if r["metric"] == metric and (value is None or r["value"] == value)
             and all(r.get(k) == v for k, v in config.items())]
    assert len(found) == 1, found
    return found[0]


def test_equal_samples_give_ratio_1_and_same(sweep, rows):
    add(sweep, rows, "s1", "a", device_name="GPU-A")
    add(sweep, rows, "s1", "b", device_name="GPU-B")
    result = compare(connect(sweep.location), by="device_name")
    assert result.baseline == "GPU-A" and result.values == ["GPU-A", "GPU-B"]
    for r in result.rows:
        assert r["ratio"] == 1.0 and r["verdict"] == "same", r
        if r["unit"] == "step blocks":  # each side resampled on its own: an interval around 1
            assert r["ci_low"] <= 1.0 <= r["ci_high"] and r["p_value"] == 1.0, r
    step = row(result, "step_ms")
    assert step["ci_low"] < 1.0 < step["ci_high"]  # the blocks' medians spread from 7 to 31 ms
    assert [s["geomean_ratio"] for s in result.summary] == [1.0] * len(result.summary)


def test_a_2x_slower_copy_is_2_00_and_slower(sweep, rows):
    add(sweep, rows, "s1", "a", device_name="GPU-A")
    add(sweep, rows, "s1", "b", scale=2.0, device_name="GPU-B")
    result = compare(connect(sweep.location), by="device_name")
    step = row(result, "step_ms")
    totals = [v + 5.0 for v in FORWARD]
    base_blocks = block_medians(totals)
    assert base_blocks == [7.0, 10.0, 13.0, 16.0, 19.0, 22.0, 25.0, 28.0, 31.0]  # by hand: 2+5, 5+5, ...
    assert step["unit"] == "step blocks" and (step["n_baseline"], step["n_other"]) == (9, 9)
    assert step["baseline_value"] == 19.0 and step["other_value"] == 38.0
    assert step["ratio"] == 2.0 and step["verdict"] == "slower"
    assert 1.0 < step["ci_low"] <= 2.0 <= step["ci_high"]
    assert step["p_value"] == pytest.approx(exact_mann_whitney(base_blocks, [2 * v for v in base_blocks]))
    assert step["p_value"] < 0.05
    throughput = row(result, "samples_per_s")
    assert throughput["ratio"] == pytest.approx(0.5) and throughput["verdict"] == "slower"
    assert throughput["baseline_value"] == pytest.approx(16 * 1000 / 19.0)
    forward = row(result, "forward_ms")
    assert forward["baseline_value"] == 14.0 and forward["ratio"] == 2.0  # blocks of 1..27: median 14
    (summary,) = [s for s in result.summary if s["metric"] == "step_ms"]
    assert summary["geomean_ratio"] == pytest.approx(2.0) and summary["slower_or_more"] == 1
    assert (summary["ci_low"], summary["ci_high"]) == (step["ci_low"], step["ci_high"])  # one configuration


def test_within_the_minimum_effect_is_same_and_a_smaller_one_tells(sweep, rows):
    steady = [10.0 + 0.001 * v for v in FORWARD]  # steps within 0.3% of each other
    add(sweep, rows, "s1", "a", forward=steady, device_name="GPU-A")
    add(sweep, rows, "s1", "b", forward=steady, scale=1.03, device_name="GPU-B")
    con = connect(sweep.location)
    assert row(compare(con, by="device_name"), "step_ms")["verdict"] == "same"
    strict = row(compare(con, by="device_name", min_effect=0.01), "step_ms")
    assert strict["ratio"] == pytest.approx(1.03) and strict["verdict"] == "slower"


def test_four_repeats_a_side_make_the_trial_the_sample(sweep, rows):
    assert MIN_TRIALS == 4
    base_forward = [10.0, 11.0, 12.0, 13.0]
    for i, f in enumerate(base_forward):
        add(sweep, rows, "s1", f"a{i}", forward=[f - 1, f, f + 1], device_name="GPU-A", seed=i)
        add(sweep, rows, "s1", f"b{i}", forward=[2 * f - 1, 2 * f, 2 * f + 1], device_name="GPU-B", seed=i)
    result = compare(connect(sweep.location), by="device_name")
    step = row(result, "step_ms")
    assert step["unit"] == "trials" and (step["n_baseline"], step["n_other"]) == (4, 4)
    # Trial medians: forward f plus 5 ms of the other phases.
    base = [f + 5 for f in base_forward]
    other = [2 * f + 5 for f in base_forward]
    assert step["baseline_value"] == float(np.median(base)) == 16.5
    assert step["other_value"] == float(np.median(other)) == 28.0
    assert step["ratio"] == pytest.approx(28.0 / 16.5)
    assert step["p_value"] == pytest.approx(exact_mann_whitney(base, other)) == pytest.approx(2 / 70)
    assert step["verdict"] == "slower"


def test_three_repeats_pool_their_blocks(sweep, rows):
    for i in range(3):
        add(sweep, rows, "s1", f"a{i}", device_name="GPU-A", seed=i)
        add(sweep, rows, "s1", f"b{i}", scale=2.0, device_name="GPU-B", seed=i)
    step = row(compare(connect(sweep.location), by="device_name"), "step_ms")
    assert step["unit"] == "step blocks" and (step["n_baseline"], step["n_other"]) == (27, 27)
    assert step["ratio"] == 2.0 and step["verdict"] == "slower"


def test_too_few_steps_to_test_is_unsure_not_a_verdict(sweep, rows):
    add(sweep, rows, "s1", "a", forward=[1.0, 2.0], device_name="GPU-A")  # 2 steps: one block
    add(sweep, rows, "s1", "b", forward=[9.0, 9.0], device_name="GPU-B")
    step = row(compare(connect(sweep.location), by="device_name"), "step_ms")
    assert (step["n_baseline"], step["n_other"]) == (1, 1)
    assert step["ratio"] == pytest.approx(14.0 / 6.5) and step["verdict"] == "unsure" and step["p_value"] is None


def test_the_summary_is_the_geometric_mean_over_configurations(sweep, rows):
    add(sweep, rows, "s1", "a16", device_name="GPU-A", batch_size=16, params='{"batch_size": 16}')
    add(sweep, rows, "s1", "b16", scale=2.0, device_name="GPU-B", batch_size=16, params='{"batch_size": 16}')
    add(sweep, rows, "s1", "a32", device_name="GPU-A", batch_size=32, params='{"batch_size": 32}')
    add(sweep, rows, "s1", "b32", scale=0.5, device_name="GPU-B", batch_size=32, params='{"batch_size": 32}')
    result = compare(connect(sweep.location), by="device_name")
    assert [r["ratio"] for r in result.rows if r["metric"] == "step_ms"] == [2.0, 0.5]
    (summary,) = [s for s in result.summary if s["metric"] == "step_ms"]
    assert summary["configs"] == 2 and summary["geomean_ratio"] == pytest.approx(math.sqrt(2.0 * 0.5))
    assert (summary["faster_or_less"], summary["slower_or_more"]) == (1, 1)


def test_a_configuration_is_everything_but_the_axis_and_the_seed(sweep, rows):
    add(sweep, rows, "s1", "a", device_name="GPU-A", precision="fp32", params='{"precision": "fp32"}')
    add(sweep, rows, "s1", "b", scale=2.0, device_name="GPU-A", precision="bf16", params='{"precision": "bf16"}')
    add(sweep, rows, "s1", "c", device_name="GPU-B", precision="fp32", params='{"precision": "fp32"}')
    result = compare(connect(sweep.location), by="precision", baseline="fp32")
    # GPU-B has no bf16 trial: only GPU-A's configuration is compared, and the device is a column.
    assert result.values == ["bf16", "fp32"] and result.baseline == "fp32"
    step = row(result, "step_ms")
    assert step["ratio"] == 2.0 and step["device"] == "GPU-A"
    assert "precision" not in result.row_columns


def test_a_workload_parameter_is_an_axis(sweep, rows):
    add(sweep, rows, "s1", "a", params='{"depth": 2}')
    add(sweep, rows, "s1", "b", scale=1.5, params='{"depth": 4}')
    result = compare(connect(sweep.location), by="depth")
    assert result.values == ["2", "4"] and row(result, "step_ms")["ratio"] == 1.5


def test_intervals_do_not_depend_on_what_else_is_compared(sweep, rows):
    add(sweep, rows, "s1", "a", device_name="GPU-A")
    add(sweep, rows, "s1", "b", scale=1.3, forward=[v * (1 + 0.01 * (v % 5)) for v in FORWARD], device_name="GPU-B")
    con = connect(sweep.location)
    whole = row(compare(con, by="device_name"), "step_ms")
    alone = row(compare(con, by="device_name", metrics=["step_ms"]), "step_ms")
    assert (whole["ci_low"], whole["ci_high"], whole["p_value"]) == (alone["ci_low"], alone["ci_high"], alone["p_value"])


def test_environment_differences_are_listed(sweep, rows):
    add(sweep, rows, "s1", "a", device_name="GPU-A", torch_version="2.4.0")
    add(sweep, rows, "s1", "b", device_name="GPU-B", torch_version="2.5.1")
    env = {e["field"]: (e["baseline"], e["other"]) for e in compare(connect(sweep.location), by="device_name").environment}
    assert env == {"device_name": ("GPU-A", "GPU-B"), "torch_version": ("2.4.0", "2.5.1")}


def test_bad_axis_and_baseline_name_the_fix(sweep, rows):
    add(sweep, rows, "s1", "a", device_name="GPU-A")
    add(sweep, rows, "s1", "b", device_name="GPU-B")
    con = connect(sweep.location)
    with pytest.raises(CompareError, match=r"^by nosuch: no such trials column .* try one of device_name"):
        compare(con, by="nosuch")
    with pytest.raises(CompareError, match=r"^baseline H100: no ok trial has device_name = 'H100'; .* GPU-A, GPU-B"):
        compare(con, by="device_name", baseline="H100")
    with pytest.raises(CompareError, match=r"^by precision: .* one value, 'fp32'; compare needs 2 or more"):
        compare(con, by="precision")
    with pytest.raises(CompareError, match=r"^metrics nope: unknown"):
        compare(con, by="device_name", metrics=["nope"])


# ------------------------------------------------------------------ the CLI and the regression gate


def run(*args):
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_the_cli_names_compares_parameters_as_its_options(sweep, rows):
    """The library's `by nosuch: ...` (test_bad_axis_and_baseline_name_the_fix) is `--by nosuch: ...` here."""
    add(sweep, rows, "s1", "a", device_name="GPU-A")
    add(sweep, rows, "s1", "b", device_name="GPU-B")
    expected = {
        ("--by", ""): "--by: give an axis, e.g. --by device_name (a trials column or a workload parameter)",
        ("--by", "config"): "--by config: the configuration is what is kept equal; give one of its parts, e.g. "
                            "--by precision",
        ("--by", "device_name", "--metric", "nope"): f"--metric nope: unknown; choose from {', '.join(METRIC_NAMES)}",
        ("--by", "device_name", "--min-effect", "5"): "--min-effect 5.0: give a fraction from 0 up to 1, e.g. 0.05 for 5%",
        ("--by", "device_name", "--baseline", "H100"): "--baseline H100: no ok trial has device_name = 'H100'; its "
                                                       "values here: GPU-A, GPU-B",
        ("--by", "precision"): "--by precision: the ok trials in --sweep latest (the default) have one value, 'fp32'; "
                               "compare needs 2 or more (choose another axis, or run the grid with more, e.g. "
                               "`gpus: each` for GPU models)",
    }
    for args, line in expected.items():
        assert run("compare", *args, "--store", sweep.location) == (2, f"Error: {line}\n"), args


def test_the_gate_catches_a_sweep_slowed_2x_and_passes_a_rerun(store, rows):
    for sweep_id, scale, minute in (("old", 1.0, 0), ("rerun", 1.0, 1), ("slow", 2.0, 2)):
        store.write_sweep(rows.sweep(sweep_id, created_at=rows.T0.replace(minute=minute), name=sweep_id))
        for batch in (16, 32):
            add(store, rows, sweep_id, f"t{batch}", scale=scale, batch_size=batch,
                params=json.dumps({"batch_size": batch}), torch_version="2.5.1" if sweep_id == "slow" else "2.4.0")
    code, out = run("compare", "--by", "sweep", "--baseline", "old", "--store", store.location, "--fail-on",
                    "slower", "--sweep", "all", "--format", "json", "--metric", "step_ms")
    assert code == 1, out
    document = json.loads(out[:out.rindex("}") + 1])
    verdicts = {(r["value"], r["batch_size"]): r["verdict"] for r in document["rows"]}
    assert verdicts == {("rerun", 16): "same", ("rerun", 32): "same", ("slow", 16): "slower", ("slow", 32): "slower"}
    assert "2 configuration(s) slower than the baseline old" in out
    assert {"value": "slow", "field": "torch_version", "baseline": "2.4.0", "other": "2.5.1"} in document["environment"]
    # The same sweep run again is not a regression.
    code, out = run("compare", "--by", "sweep", "--baseline", "old", "--store", store.location, "--fail-on", "slower",
                    "--format", "csv", "--metric", "step_ms")
    assert code == 1  # the slow sweep is still in the store
    store_rows = [line.split(",") for line in out.strip().splitlines()]
    header = store_rows[0]
    assert header[:2] == ["batch_size", "metric"] or "verdict" in header


def test_the_gate_passes_when_nothing_is_slower(store, rows):
    for sweep_id, minute in (("old", 0), ("rerun", 1)):
        store.write_sweep(rows.sweep(sweep_id, created_at=rows.T0.replace(minute=minute), name=sweep_id))
        add(store, rows, sweep_id, "t", scale=1.0)
    code, out = run("compare", "--by", "sweep", "--baseline", "old", "--store", store.location, "--fail-on", "slower",
                    "--format", "table")
    assert code == 0, out
    assert "sweep: rerun against the baseline old (1 configuration(s); verdicts beyond 5%)" in out
    assert "environment: the same driver, CUDA, torch, stepscope and device on every side" in out


def test_cli_errors_are_one_line_and_exit_2(store, rows, tmp_path):
    code, out = run("compare", "--by", "device_name", "--store", str(tmp_path / "none"))
    assert code == 2 and "no store there" in out
    store.write_sweep(rows.sweep("s1"))
    add(store, rows, "s1", "a", device_name="GPU-A")
    add(store, rows, "s1", "b", device_name="GPU-B")
    code, out = run("compare", "--by", "nosuch", "--store", store.location)
    assert code == 2 and out.count("\n") == 1 and out.startswith("Error: --by nosuch")
    code, out = run("compare", "--by", "device_name", "--store", store.location, "--format", "csv", "--show", "all")
    assert code == 2 and "csv holds one table" in out


# ------------------------------------------------------------------ what a gate must not miss


def gate_store(store, rows, sweeps):
    """sweeps: (sweep_id, created minute, {batch_size: (scale, status)})."""
    for sweep_id, minute, trials in sweeps:
        store.write_sweep(rows.sweep(sweep_id, created_at=rows.T0.replace(minute=minute), name=sweep_id))
        for batch, (scale, status) in trials.items():
            add(store, rows, sweep_id, f"t{batch}", scale=scale, batch_size=batch, status=status,
                params=json.dumps({"batch_size": batch}))


def test_a_repeated_metric_counts_once(sweep, rows):
    add(sweep, rows, "s1", "a", device_name="GPU-A")
    add(sweep, rows, "s1", "b", scale=2.0, device_name="GPU-B")
    result = compare(connect(sweep.location), by="device_name", metrics=["step_ms", "step_ms"])
    assert len(result.rows) == 1 and result.summary[0]["configs"] == 1


def test_sweep_latest_compares_the_newest_sweep_with_the_baseline(store, rows):
    gate_store(store, rows, [("old", 0, {16: (1.0, "ok")}), ("slow", 1, {16: (2.0, "ok")}),
                             ("new", 2, {16: (1.0, "ok")})])
    con = connect(store.location)
    assert compare(con, by="sweep", baseline="old").values == ["old", "slow", "new"]
    latest = compare(con, by="sweep", baseline="old", sweep="latest")
    assert latest.values == ["old", "new"] and [r["verdict"] for r in latest.rows if r["metric"] == "step_ms"] == ["same"]
    code, _ = run("compare", "--by", "sweep", "--baseline", "old", "--sweep", "latest", "--fail-on", "slower",
                  "--store", store.location)
    assert code == 0
    with pytest.raises(SweepError, match=r"^--sweep nosuch: no such sweep in the store; use latest, all, or one of: "
                                         r"new, slow, old$"):
        compare(con, by="sweep", sweep="nosuch")


def test_a_configuration_the_new_sweep_lost_fails_the_gate(store, rows):
    gate_store(store, rows, [("old", 0, {16: (1.0, "ok"), 32: (1.0, "ok")}),
                             ("new", 1, {16: (1.0, "ok"), 32: (1.0, "failed")})])
    result = compare(connect(store.location), by="sweep", baseline="old")
    assert result.gaps == [{"value": "new", "missing_configs": 1,
                            "detail": "no ok trial of: workload=mlp batch_size=32 precision=fp32 optimizer=sgd on cpu"}]
    code, out = run("compare", "--by", "sweep", "--baseline", "old", "--fail-on", "slower", "--store", store.location)
    assert code == 1 and "1 configuration(s) of the baseline missing (new): --fail-on slower" in out
    code, _ = run("compare", "--by", "sweep", "--baseline", "old", "--fail-on", "faster", "--store", store.location)
    assert code == 0


def test_a_sweep_whose_trials_all_failed_is_a_gap_not_silence(store, rows):
    gate_store(store, rows, [("old", 0, {16: (1.0, "ok")}), ("new", 1, {16: (1.0, "ok")}),
                             ("broken", 2, {16: (1.0, "failed")})])
    result = compare(connect(store.location), by="sweep", baseline="old")
    assert {"value": "broken", "missing_configs": 1, "detail": "no trial ended ok (1 failed)"} in result.gaps
    code, out = run("compare", "--by", "sweep", "--baseline", "old", "--fail-on", "changed", "--store", store.location)
    assert code == 1 and "missing (broken)" in out


def test_nothing_in_common_is_an_error_that_says_why(store, rows):
    store.write_sweep(rows.sweep("s1"))
    add(store, rows, "s1", "a", device_name="GPU-A", params='{"iterations": 10}')
    add(store, rows, "s1", "b", device_name="GPU-B", params='{"iterations": 30}')
    with pytest.raises(CompareError, match=r"no configuration has both the baseline 'GPU-A' and another value; "
                                           r"they differ in iterations"):
        compare(connect(store.location), by="device_name")


def test_no_ok_trial_and_a_bad_minimum_effect_say_so(store, rows):
    store.write_sweep(rows.sweep("s1"))
    add(store, rows, "s1", "a", device_name="GPU-A", status="failed")
    add(store, rows, "s1", "b", device_name="GPU-B", status="failed")
    con = connect(store.location)
    with pytest.raises(CompareError, match=r"^by device_name: no trial in sweep latest \(the default\) ended ok \(GPU-A: 1 failed; GPU-B: 1 failed\)"):
        compare(con, by="device_name")
    with pytest.raises(CompareError, match=r"^min_effect 5: give a fraction from 0 up to 1"):
        compare(con, by="device_name", min_effect=5)


def test_a_timeout_stops_compare_in_one_line(sweep, rows):
    add(sweep, rows, "s1", "a", device_name="GPU-A")
    add(sweep, rows, "s1", "b", device_name="GPU-B")
    code, out = run("compare", "--by", "device_name", "--store", sweep.location, "--timeout", "0.001")
    assert code == 2 and out == ("Error: the query ran past --timeout 0.001 s and was stopped; raise --timeout, "
                                 "or narrow the query\n")
