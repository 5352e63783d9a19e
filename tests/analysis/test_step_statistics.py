"""The step statistics of queries/intermediate.sql (whole_steps, trial_step_stats,
config_step_stats) and the named queries that show them, against figures computed by hand
from the raw steps.

The hand side: a step's total is the plain sum of its phases; medians are
statistics.median; percentiles are statistics.quantiles(method="inclusive"), which is
DuckDB's quantile_cont (linear interpolation between the closest ranks, R's type 7); the
coefficient of variation is statistics.stdev (sample) over statistics.mean; an outlier is
more than 3 * 1.4826 MADs from the trial's median (Leys et al. 2013); a trial is unstable
when pyperf's check would warn (sd > 10% of the mean, max > 1.5 mean, min < 0.5 mean).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from stepscope.analysis.queries import run_query
from stepscope.analysis.warehouse import connect
from stepscope.storage.schema import PHASES

# Ten measured steps' forward ms (other phases take 1 ms each). The one planted 100x is
# the slowest (10.6, iteration 6 after 2 warmup steps): it is above the median already,
# so a median that ignores magnitudes stays where it is.
FORWARD = [10.0, 10.4, 9.8, 10.2, 10.6, 9.9, 10.1, 10.3, 9.7, 10.05]
WARMUP = [80.0, 40.0]  # far off, and not measured: no statistic may see them
SPIKE = 4  # the measured step planted 100x
OTHER_PHASES_MS = 5.0  # data, to_device, loss, backward, optimizer at 1 ms


def records(result):
    columns, rows = result
    return [dict(zip(columns, row, strict=True)) for row in rows]


def hand_totals(forward: list[float]) -> list[float]:
    return [f + OTHER_PHASES_MS for f in forward]


def hand_outliers(totals: list[float]) -> list[bool]:
    median = statistics.median(totals)
    mad = statistics.median(abs(t - median) for t in totals)
    return [abs(t - median) > 3 * 1.4826 * mad for t in totals]


def hand_stats(totals: list[float], batch_size: int) -> dict:
    """Every per-trial figure, from the step totals, by the stdlib."""
    mean = statistics.mean(totals)
    deciles = statistics.quantiles(totals, n=10, method="inclusive")
    cv = statistics.stdev(totals) / mean
    p50 = statistics.median(totals)
    return {
        "steps": len(totals),
        "step_ms_p50": p50,
        "step_ms_p10": deciles[0],
        "step_ms_p90": deciles[-1],
        "step_ms_mean": mean,
        "step_ms_cv": cv,
        "outlier_steps": sum(hand_outliers(totals)),
        "samples_per_s_p50": batch_size / p50 * 1000,
        "unstable": cv > 0.10 or max(totals) > 1.5 * mean or min(totals) < 0.5 * mean,
    }


def spiked(forward: list[float], factor: float = 100) -> list[float]:
    total = forward[SPIKE] + OTHER_PHASES_MS
    return [total * factor - OTHER_PHASES_MS if i == SPIKE else f for i, f in enumerate(forward)]


def trial_stats(con, trial_id: str) -> dict:
    cursor = con.execute("select * from trial_step_stats where trial_id = ?", [trial_id])
    columns = [d[0] for d in cursor.description]
    return dict(zip(columns, cursor.fetchone(), strict=True))


@pytest.fixture
def spike_store(store, write):
    """One configuration as two trials: `clean`, and `spiky`, the same steps but one 100x."""
    write.sweep("s1")
    write.trial("s1", "clean", {"forward": WARMUP + FORWARD}, warmup=2)
    write.trial("s1", "spiky", {"forward": WARMUP + spiked(FORWARD)}, warmup=2, trial_index=1, repeat=1)
    return store


def test_the_hand_rule_flags_the_planted_step_alone():
    # The check on the checker: the planted step is the only outlier, the clean steps have none.
    assert hand_outliers(hand_totals(spiked(FORWARD))) == [i == SPIKE for i in range(len(FORWARD))]
    assert not any(hand_outliers(hand_totals(FORWARD)))
    assert spiked(FORWARD)[SPIKE] + OTHER_PHASES_MS == pytest.approx(100 * (FORWARD[SPIKE] + OTHER_PHASES_MS))


def test_a_planted_100x_step_is_flagged_on_every_phase_row(spike_store):
    con = connect(spike_store)
    flagged = con.execute(
        "select trial_id, iteration, count(*) from measured_steps where is_outlier group by all"
    ).fetchall()
    assert flagged == [("spiky", len(WARMUP) + SPIKE, len(PHASES))]
    # Every measured step has its flag (none is null), warmup steps are not measured steps.
    assert con.execute("select count(*) from measured_steps where is_outlier is null").fetchone() == (0,)
    whole = con.execute(
        "select iteration, step_ms, is_outlier from whole_steps where trial_id = 'spiky' order by iteration"
    ).fetchall()
    totals = hand_totals(spiked(FORWARD))
    assert [r[0] for r in whole] == [len(WARMUP) + i for i in range(len(FORWARD))]
    assert [r[1] for r in whole] == pytest.approx(totals, rel=1e-12)
    assert [r[2] for r in whole] == hand_outliers(totals)


def test_the_outlier_does_not_move_the_median_step(spike_store):
    con = connect(spike_store)
    clean, spiky = trial_stats(con, "clean"), trial_stats(con, "spiky")
    assert spiky["step_ms_p50"] == clean["step_ms_p50"] == statistics.median(hand_totals(FORWARD))
    assert spiky["samples_per_s_p50"] == clean["samples_per_s_p50"]
    # ... where the mean it would have used moves tenfold.
    assert spiky["step_ms_mean"] > 10 * clean["step_ms_mean"]
    assert (clean["outlier_steps"], clean["unstable"]) == (0, False)
    assert (spiky["outlier_steps"], spiky["unstable"]) == (1, True)


@pytest.mark.parametrize(("trial_id", "forward"), [("clean", FORWARD), ("spiky", spiked(FORWARD))])
def test_every_trial_figure_is_the_hand_computed_one(spike_store, trial_id, forward):
    got = trial_stats(connect(spike_store), trial_id)
    want = hand_stats(hand_totals(forward), batch_size=16)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-9), name


def test_the_trials_query_shows_the_same_figures_rounded(spike_store):
    got = {r["trial_id"]: r for r in records(run_query(connect(spike_store), "trials", {}))}
    for trial_id, forward in (("clean", FORWARD), ("spiky", spiked(FORWARD))):
        want = hand_stats(hand_totals(forward), batch_size=16)
        row = got[trial_id]
        assert (row["steps"], row["outlier_steps"], row["unstable"]) == (
            want["steps"], want["outlier_steps"], want["unstable"],
        )  # fmt: skip
        for name in ("step_ms_p50", "step_ms_p10", "step_ms_p90", "step_ms_cv"):
            assert row[name] == pytest.approx(want[name], abs=0.0005), (trial_id, name)
        assert row["samples_per_s_p50"] == pytest.approx(want["samples_per_s_p50"], abs=0.05)
        assert row["samples_per_s"] == 480.0  # the stored wall-clock figure, shown as it is


def test_a_configuration_pools_its_trials_by_one_rule(spike_store):
    """step_ms_p50: the median of the trials' medians; p10, p90, cv: over the pooled steps."""
    clean, spiky = hand_totals(FORWARD), hand_totals(spiked(FORWARD))
    pooled = clean + spiky
    deciles = statistics.quantiles(pooled, n=10, method="inclusive")
    cv = statistics.stdev(pooled) / statistics.mean(pooled)
    p50 = statistics.median([statistics.median(clean), statistics.median(spiky)])

    con = connect(spike_store)
    (row,) = records(run_query(con, "phase_shares", {}))
    assert (row["trials"], row["steps"], row["outlier_steps"], row["unstable"]) == (2, 20, 1, True)
    assert row["step_ms_p50"] == pytest.approx(p50, abs=0.0005)
    assert row["step_ms_p10"] == pytest.approx(deciles[0], abs=0.0005)
    assert row["step_ms_p90"] == pytest.approx(deciles[-1], abs=0.0005)
    assert row["step_ms_cv"] == pytest.approx(cv, abs=0.0005)
    assert row["samples_per_s_p50"] == pytest.approx(16 / p50 * 1000, abs=0.05)
    assert row["samples_per_s"] == 480.0  # the median of the trials' wall-clock figures

    # phases_ms sums the phases' medians over the pooled steps; its shares add up to 100.
    phase_medians = [statistics.median(forward_ms for forward_ms in FORWARD + spiked(FORWARD))] + [1.0] * 5
    assert row["phases_ms"] == pytest.approx(sum(phase_medians), abs=0.0005)
    shares = [row[f"{phase}_pct"] for phase in PHASES]
    assert sum(shares) == pytest.approx(100, abs=0.3)


def test_phases_ms_is_not_the_median_step_when_slow_phases_fall_on_different_steps(store, write):
    """The header's claim, on numbers where it shows: forward is slow on some steps, backward
    on others, so the median of the sums is above the sum of the medians."""
    forward = [1.0, 1.0, 9.0, 9.0, 1.0]
    backward = [9.0, 9.0, 1.0, 1.0, 1.0]
    write.sweep("s1")
    write.trial("s1", "t1", {"forward": forward, "backward": backward})
    (row,) = records(run_query(connect(store), "phase_shares", {}))
    totals = [f + b + 4.0 for f, b in zip(forward, backward, strict=True)]  # 14, 14, 14, 14, 6
    phases = statistics.median(forward) + statistics.median(backward) + 4.0  # 1 + 1 + 4
    assert (row["step_ms_p50"], row["phases_ms"]) == (statistics.median(totals), phases) == (14.0, 6.0)


def test_high_variation_without_an_outlier_is_unstable(store, write):
    steady = [10.0, 10.5, 9.5, 10.2, 9.8, 10.1]
    jumpy = [10.0, 14.0, 10.0, 14.0, 10.0, 14.0]  # totals 15 and 19: no step 50% off the mean, sd 13% of it
    write.sweep("s1")
    write.trial("s1", "steady", {"forward": steady})
    write.trial("s1", "jumpy", {"forward": jumpy}, trial_index=1, config_id="c-jumpy")
    con = connect(store)
    for trial_id, forward in (("steady", steady), ("jumpy", jumpy)):
        want = hand_stats(hand_totals(forward), batch_size=16)
        got = trial_stats(con, trial_id)
        assert got["unstable"] is want["unstable"] is (trial_id == "jumpy")
        assert got["outlier_steps"] == want["outlier_steps"] == 0
        assert got["step_ms_cv"] == pytest.approx(want["step_ms_cv"], rel=1e-9)


@pytest.mark.parametrize("factor", [2.0, 0.4])
def test_one_step_50_percent_off_the_mean_is_unstable_however_low_the_cv(store, write, factor):
    """pyperf's other check alone: among 200 steady steps one takes twice (or 0.4x) the others'
    time; the sd stays under 10% of the mean, the step is still 50% off it."""
    forward = [10.0 + (i % 5) * 0.1 for i in range(200)]
    forward[100] = (forward[100] + OTHER_PHASES_MS) * factor - OTHER_PHASES_MS
    want = hand_stats(hand_totals(forward), batch_size=16)
    assert want["step_ms_cv"] < 0.10 and want["unstable"]  # the premise, by hand
    write.sweep("s1")
    write.trial("s1", "t1", {"forward": forward})
    got = trial_stats(connect(store), "t1")
    assert got["unstable"] is True
    assert got["step_ms_cv"] == pytest.approx(want["step_ms_cv"], rel=1e-9)
    assert got["outlier_steps"] == want["outlier_steps"] == 1


def test_a_configurations_median_step_is_the_median_of_its_trials_medians(store, write):
    repeats = [[10.0, 10.2, 9.9], [10.1, 10.3, 10.0], [14.0, 14.2, 13.9]]  # medians 15, 15.1, 19
    write.sweep("s1")
    for i, forward in enumerate(repeats):
        write.trial("s1", f"r{i}", {"forward": forward}, trial_index=i, repeat=i)
    (row,) = records(run_query(connect(store), "phase_shares", {}))
    medians = [statistics.median(hand_totals(forward)) for forward in repeats]
    assert row["step_ms_p50"] == pytest.approx(statistics.median(medians), abs=0.0005)
    assert row["step_ms_p50"] != pytest.approx(statistics.mean(medians), abs=0.1)  # not their mean
    assert (row["trials"], row["steps"]) == (3, 9)


def test_repeats_that_disagree_make_a_stable_configuration_unstable(store, write):
    """Each repeat is steady on its own; together their steps spread by more than 10%."""
    fast = [10.0, 10.1, 9.9, 10.0]
    slow = [14.0, 14.1, 13.9, 14.0]
    write.sweep("s1")
    write.trial("s1", "r0", {"forward": fast})
    write.trial("s1", "r1", {"forward": slow}, trial_index=1, repeat=1)
    con = connect(store)
    assert [trial_stats(con, t)["unstable"] for t in ("r0", "r1")] == [False, False]
    pooled = hand_totals(fast) + hand_totals(slow)
    assert statistics.stdev(pooled) / statistics.mean(pooled) > 0.10
    (row,) = records(run_query(con, "phase_shares", {}))
    assert row["unstable"] is True and row["trials"] == 2


def test_warmup_and_cut_short_steps_are_no_steps_to_time(store, write, rows):
    write.sweep("s1")
    # A 100x warmup step is neither counted nor flagged.
    write.trial("s1", "t1", {"forward": [1000.0, 2.0, 3.0, 4.0]}, warmup=1)
    # An oom trial: two whole steps, then one cut short after its first two phases.
    cut = rows.steps("s1", "oom", {"forward": [2.0, 4.0, 500.0]})[:-4]
    store.write_trial("s1", "oom", rows.trial("s1", "oom", trial_index=1, status="oom"), cut)
    con = connect(store)
    t1 = trial_stats(con, "t1")
    assert (t1["steps"], t1["step_ms_p50"], t1["outlier_steps"]) == (3, 8.0, 0)
    oom = trial_stats(con, "oom")
    assert (oom["steps"], oom["step_ms_p50"]) == (2, statistics.median([7.0, 9.0]))
    # The oom trial has no configuration figures: only ok trials make one.
    assert con.execute("select count(*) from config_step_stats").fetchone() == (1,)


def test_the_median_step_is_one_number_in_every_query(store, write):
    """The same configuration's step_ms_p50 in trials, phase_shares, batch_scaling and
    launch_bound (a CUDA trial, which launch_bound needs)."""
    forward = [3.0, 7.0, 4.0, 5.0, 30.0]
    write.sweep("s1")
    write.trial("s1", "t1", {"forward": forward}, device_kind="cuda", device_name="NVIDIA H100 80GB HBM3")
    con = connect(store)
    want = statistics.median(hand_totals(forward))
    for name in ("trials", "phase_shares", "batch_scaling", "launch_bound"):
        (row,) = records(run_query(con, name, {}))
        assert row["step_ms_p50"] == want, name
        if "samples_per_s_p50" in row:
            assert row["samples_per_s_p50"] == round(16 / want * 1000, 1), name


def test_within_noise_is_overlapping_p10_p90_ranges(store, write):
    """How the docs (docs/results.md) say to tell two configurations apart, run on three: a and b overlap,
    c is clear of both."""
    steps = {
        "a": [10.0, 10.5, 11.0, 10.2, 10.8],
        "b": [10.6, 11.2, 11.6, 10.9, 11.4],
        "c": [14.0, 14.5, 14.2, 14.8, 14.1],
    }
    write.sweep("s1")
    for i, (config_id, forward) in enumerate(steps.items()):
        write.trial("s1", config_id, {"forward": forward}, trial_index=i, config_id=config_id)

    def band(forward):
        deciles = statistics.quantiles(hand_totals(forward), n=10, method="inclusive")
        return deciles[0], deciles[-1]

    hand = {
        (x, y)
        for x in steps
        for y in steps
        if x < y and band(steps[x])[0] <= band(steps[y])[1] and band(steps[y])[0] <= band(steps[x])[1]
    }
    assert hand == {("a", "b")}
    result = connect(store).execute(readme_within_noise_sql())
    columns = [d[0] for d in result.description]
    got = {(row[columns.index("a")], row[columns.index("b")]) for row in result.fetchall()}
    assert got == hand


def readme_within_noise_sql() -> str:
    """The `stepscope sql "..."` the docs give for the check (docs/results.md), as written there."""
    root = Path(__file__).parents[2]
    readme = "\n".join(p.read_text(encoding="utf-8") for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))])
    marker = "other's noise, their p10–p90 ranges of the step totals overlapping"
    assert readme.count(marker) == 1, "README.md, docs/*.md: the within-noise example moved"
    block = readme[readme.index(marker) :].split("```bash\n", 1)[1].split("```", 1)[0]
    return block.strip().removeprefix('stepscope sql "').removesuffix('"')


def test_one_measured_step_is_neither_stable_nor_unstable(store, write):
    write.sweep("s1")
    write.trial("s1", "one", {"forward": [10.0]})
    got = trial_stats(connect(store), "one")
    assert got["steps"] == 1 and got["step_ms_cv"] is None and got["unstable"] is None


def test_utilization_carries_the_median_step_rate_and_the_stability_of_its_trials(store, write):
    """The wall-clock step rate pays for the 100x step; step_tflops_p50 divides the same FLOPs
    by the median step, as every other query's step time; unstable and outlier_steps say why
    the two disagree."""
    write.sweep("s1")
    write.trial("s1", "counted", {"forward": spiked(FORWARD)}, achieved_tflops=0.05,
                flops_forward=10**9, flops_backward=2 * 10**9)
    [row] = records(run_query(connect(store), "utilization", {}))
    p50 = statistics.median(hand_totals(spiked(FORWARD)))
    assert row["step_tflops_p50"] == round(3e9 / p50 / 1e9, 4)
    assert row["unstable"] is True and row["outlier_steps"] == 1
    assert row["step_tflops"] == 0.05  # the wall clock's figure, as stored
