"""A measured peak that cannot lie: the cached matmul peak expires, is measured again when
a step runs faster than it allows, and an MFU above 1 always carries a flag naming why.

The stale figure is planted under the key a trial on this CPU reads, built here by hand
from what keys a CPU figure (host, CPU model, precision, torch, threads, affinity), and a
real trial then runs and measures for real. Expected values are computed here: MFU as
achieved / peak from the stored row's own parts, ages from the planted timestamps,
tolerances from the planted min/median/max.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket

import pytest
import torch

from stepscope.analysis.queries import run_query
from stepscope.analysis.warehouse import connect
from stepscope.orchestrator.scheduler import sweep_row
from stepscope.orchestrator.spec import parse_spec
from stepscope.storage.store import Store
from stepscope.workloads.measure.device import cpu_model, describe
from stepscope.workloads.measure.flop_peaks import MeasuredPeak, PeakError, matmul, revalidation
from stepscope.workloads.measure.flop_peaks import cache as peak_cache
from stepscope.workloads.measure.records import Work
from stepscope.workloads.measure.runner import run_trial
from stepscope.workloads.measure.utilization import rates
from stepscope.workloads.registry import resolve_params
from stepscope.workloads.trial import Trial


def now():
    return dt.datetime.now(dt.timezone.utc)


def cpu_key(precision: str = "fp32") -> str:
    """The key a CPU figure is cached under, from its parts (not from peaks' own reader)."""
    conditions = {"num_threads": torch.get_num_threads(), "cpu_affinity": len(os.sched_getaffinity(0))}
    return peak_cache.cache_key(socket.gethostname(), cpu_model(), None, precision, str(torch.__version__), conditions)


def plant(cache, tflops, *, ago, lo=None, hi=None, precision="fp32"):
    """Write one entry of this format, measured `ago` before now."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / peak_cache.CACHE_FILE
    data = json.loads(path.read_text()) if path.exists() else {}
    data[cpu_key(precision)] = {
        "format": peak_cache.CACHE_FORMAT, "tflops": tflops, "min_tflops": lo or tflops, "max_tflops": hi or tflops,
        "samples": 9, "discarded": 1, "duration_s": 0.3, "n": 512, "reps": 2, "device": cpu_model(),
        "precision": precision, "conditions": {}, "measured_at": (now() - ago).isoformat(timespec="seconds"),
    }
    path.write_text(json.dumps(data))
    return path


def entry(path, precision="fp32"):
    return json.loads(path.read_text())[cpu_key(precision)]


def scripted(*values):
    """A `_measure` that returns these medians in turn (min = max = median)."""
    left = list(values)

    def measure(torch, dev, p):
        v = left.pop(0)
        return MeasuredPeak(v, v, v, 5, 1, 0.3, 64, 1)

    return measure


def never(*args, **kwargs):
    raise AssertionError("measured again")


# ---------------------------------------------------------------- in a real trial


def test_a_stale_peak_that_would_give_mfu_above_1_is_measured_again_in_a_real_trial(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("STEPSCOPE_CACHE_DIR", str(cache))
    stale = 1e-9  # TFLOP/s: a figure "taken on a busy machine", an hour ago (well inside the age limit)
    path = plant(cache, stale, ago=dt.timedelta(hours=1))
    started = now().replace(microsecond=0)
    params = resolve_params({"workload": "mlp", "depth": 2, "width": 32, "input_dim": 16, "batch_size": 8,
                             "iterations": 5, "warmup": 1})
    store = Store(str(tmp_path / "store"))
    store.write_sweep(sweep_row(parse_spec("name: stale\ngrid: {workload: [mlp]}\n"), "s", 2, None))
    row = run_trial(Trial(0, "t0", 0, None, params), "s", store)
    assert row["status"] == "ok", row["error"]
    assert row["achieved_tflops"] / stale > 1  # what the planted figure would have said
    assert row["mfu_flag"] == revalidation.FLAG_REMEASURED
    fresh = entry(path)
    assert fresh["tflops"] == row["peak_tflops_measured"] != stale  # measured for real and cached
    assert dt.datetime.fromisoformat(fresh["measured_at"]) >= started
    assert row["mfu_measured"] == pytest.approx(row["achieved_tflops"] / fresh["tflops"])
    assert 0 < row["mfu_measured"] <= 1 and 0 < row["hfu_measured"] <= 1

    # The next trial reads the new figure: nothing to re-measure, nothing to flag.
    monkeypatch.setattr(matmul, "measure", never)
    again = run_trial(Trial(1, "t1", 1, None, params), "s", store)
    assert again["peak_tflops_measured"] == fresh["tflops"] and again["mfu_flag"] is None

    # What a user reads: the typed column in `trials`, and the configuration's flags in `utilization`.
    con = connect(str(tmp_path / "store"))
    assert con.sql("select trial_id, mfu_flag from trials order by trial_id").fetchall() == [
        ("t0", revalidation.FLAG_REMEASURED), ("t1", None)]
    names, values = run_query(con, "utilization", {})
    (got,) = [dict(zip(names, v, strict=True)) for v in values]
    assert (got["flagged_trials"], got["mfu_flags"]) == (1, revalidation.FLAG_REMEASURED)
    assert got["mfu_measured"] <= 1


def test_a_rate_above_a_peak_measured_minutes_ago_is_stored_as_it_is_and_flagged(tmp_path, monkeypatch):
    """A figure measured less than REMEASURE_AFTER_S ago is not measured again (the FLOP
    count is the suspect): the share above 1 is kept, never clipped, and flagged."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("STEPSCOPE_CACHE_DIR", str(cache))
    plant(cache, 1e-6, ago=dt.timedelta(seconds=30))
    monkeypatch.setattr(matmul, "measure", never)
    forward, backward, wall_s, steps = 2_000_000, 4_000_000, 0.5, 10
    work = rates(torch, torch.device("cpu"), "fp32", Work(flops_forward=forward, flops_backward=backward),
                 wall_s, steps, describe(torch, torch.device("cpu")))
    achieved = (forward + backward) / (wall_s / steps) / 1e12  # 1.2e-4 TFLOP/s
    assert work.achieved_tflops == pytest.approx(achieved)
    assert work.mfu_measured == pytest.approx(achieved / 1e-6) == pytest.approx(120.0)
    assert work.mfu_flag == revalidation.FLAG_ABOVE_MEASURED


# ---------------------------------------------------------------- age


def test_an_entry_older_than_the_age_limit_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.delenv(peak_cache.MAX_AGE_ENV, raising=False)
    path = plant(tmp_path, 123.0, ago=dt.timedelta(days=8))  # plausible, but 8 days old: over the 7
    got = peak_cache.matmul_peak("cpu", "fp32", tmp_path)
    assert got.measured_now and got.tflops != 123.0 and got.age_s < 60
    assert entry(path)["tflops"] == got.tflops  # the real measurement replaced it

    plant(tmp_path, 123.0, ago=dt.timedelta(days=6))  # inside the limit: read, not measured
    monkeypatch.setattr(matmul, "measure", never)
    kept = peak_cache.matmul_peak("cpu", "fp32", tmp_path)
    assert (kept.tflops, kept.measured_now) == (123.0, False)
    assert kept.age_s == pytest.approx(6 * 86400, abs=60)


def test_the_age_limit_is_set_by_the_environment(tmp_path, monkeypatch):
    plant(tmp_path, 123.0, ago=dt.timedelta(days=8))
    monkeypatch.setenv(peak_cache.MAX_AGE_ENV, "30")
    monkeypatch.setattr(matmul, "measure", never)
    assert peak_cache.matmul_peak("cpu", "fp32", tmp_path).tflops == 123.0  # 8 days < 30
    monkeypatch.setenv(peak_cache.MAX_AGE_ENV, "0.25")  # 6 hours
    monkeypatch.setattr(matmul, "measure", scripted(7.0))
    assert peak_cache.matmul_peak("cpu", "fp32", tmp_path).tflops == 7.0


@pytest.mark.parametrize(("text", "seconds"), [("", 7 * 86400), ("7", 7 * 86400), ("0.5", 43200), ("0", 0),
                                               ("inf", float("inf"))])
def test_max_age_days(text, seconds, monkeypatch):
    monkeypatch.setenv(peak_cache.MAX_AGE_ENV, text)
    assert peak_cache.peak_max_age_s() == seconds


@pytest.mark.parametrize("text", ["-1", "week", "nan"])
def test_a_bad_max_age_is_refused_naming_the_variable(text, monkeypatch):
    monkeypatch.setenv(peak_cache.MAX_AGE_ENV, text)
    with pytest.raises(PeakError, match=f"STEPSCOPE_PEAK_MAX_AGE_DAYS: '{text}' is not a number of days"):
        peak_cache.peak_max_age_s()


def test_an_entry_that_does_not_say_when_it_was_measured_is_expired(tmp_path, monkeypatch):
    path = plant(tmp_path, 123.0, ago=dt.timedelta(0))
    data = json.loads(path.read_text())
    data[cpu_key()]["measured_at"] = "last tuesday"
    path.write_text(json.dumps(data))
    monkeypatch.setattr(matmul, "measure", scripted(5.0))
    assert peak_cache.matmul_peak("cpu", "fp32", tmp_path).tflops == 5.0


# ---------------------------------------------------------------- tolerance and flags


def test_the_tolerance_is_the_fastest_batch_over_the_median_capped(tmp_path):
    path = plant(tmp_path, 2.0, lo=1.0, hi=2.1, ago=dt.timedelta(hours=1))
    got = peak_cache.matmul_peak("cpu", "fp32", tmp_path)
    assert got.tolerance == pytest.approx(2.1 / 2.0 - 1)  # 0.05
    assert got.spread == pytest.approx((2.1 - 1.0) / 2.0)
    data = json.loads(path.read_text())
    data[cpu_key()]["max_tflops"] = 6.0  # 3x the median: a figure timed under varying load
    path.write_text(json.dumps(data))
    assert peak_cache.matmul_peak("cpu", "fp32", tmp_path).tolerance == peak_cache.TOLERANCE_CAP


@pytest.mark.parametrize(("rate", "flag"), [
    (1.9, None),                          # below the median
    (2.05, revalidation.FLAG_WITHIN_TOLERANCE),  # above the median, below the fastest batch (2.1)
    (2.1, revalidation.FLAG_WITHIN_TOLERANCE),   # at it: 2.0 * (1 + 0.05)
    (None, None),                         # no rate (no FLOPs counted)
])
def test_a_rate_within_the_tolerance_is_not_measured_again(rate, flag, tmp_path, monkeypatch):
    plant(tmp_path, 2.0, lo=1.9, hi=2.1, ago=dt.timedelta(hours=1))
    monkeypatch.setattr(matmul, "measure", never)
    check = revalidation.checked_matmul_peak("cpu", "fp32", tmp_path, rate)
    assert (check.peak.tflops, check.flag, check.remeasured) == (2.0, flag, False)


def test_a_rate_beyond_the_tolerance_measures_again(tmp_path, monkeypatch):
    path = plant(tmp_path, 2.0, lo=1.9, hi=2.1, ago=dt.timedelta(hours=1))
    monkeypatch.setattr(matmul, "measure", scripted(4.0))
    check = revalidation.checked_matmul_peak("cpu", "fp32", tmp_path, 2.2)
    assert (check.peak.tflops, check.flag, check.remeasured) == (4.0, revalidation.FLAG_REMEASURED, True)
    assert entry(path)["tflops"] == 4.0


def test_a_rate_still_above_after_measuring_again_is_flagged_above_the_measured_peak(tmp_path, monkeypatch):
    path = plant(tmp_path, 2.0, ago=dt.timedelta(hours=1))
    monkeypatch.setattr(matmul, "measure", scripted(3.0))
    check = revalidation.checked_matmul_peak("cpu", "fp32", tmp_path, 5.0)
    assert (check.peak.tflops, check.flag, check.remeasured) == (3.0, revalidation.FLAG_ABOVE_MEASURED, True)
    assert entry(path)["tflops"] == 3.0
    # Measured seconds ago now: the next such trial is flagged without measuring again.
    monkeypatch.setattr(matmul, "measure", never)
    check = revalidation.checked_matmul_peak("cpu", "fp32", tmp_path, 5.0)
    assert (check.peak.tflops, check.flag, check.remeasured) == (3.0, revalidation.FLAG_ABOVE_MEASURED, False)


def test_a_new_key_measured_for_this_trial_is_not_measured_twice(tmp_path, monkeypatch):
    monkeypatch.setattr(matmul, "measure", scripted(1.0))  # a second call would pop an empty list
    check = revalidation.checked_matmul_peak("cpu", "fp32", tmp_path, 5.0)
    assert (check.peak.tflops, check.flag, check.remeasured) == (1.0, revalidation.FLAG_ABOVE_MEASURED, False)


@pytest.mark.parametrize(("measured", "sheet", "want"), [
    (None, (0.5, 0.6), None),
    (revalidation.FLAG_REMEASURED, (0.5, 0.6), revalidation.FLAG_REMEASURED),
    (revalidation.FLAG_REMEASURED, (0.9, 1.2), revalidation.FLAG_ABOVE_DATASHEET),  # HFU above the sheet
    (None, (None, None), None),                                        # a CPU: no datasheet
    (revalidation.FLAG_ABOVE_MEASURED, (1.0, 1.0), revalidation.FLAG_ABOVE_MEASURED),  # exactly 1 is a fraction
])
def test_the_datasheet_flag_comes_first(measured, sheet, want):
    assert revalidation.flag_rates(measured, sheet) == want


# ---------------------------------------------------------------- the cache, listed and cleared


def test_cache_entries_say_which_are_read(tmp_path, monkeypatch):
    monkeypatch.delenv(peak_cache.MAX_AGE_ENV, raising=False)
    path = plant(tmp_path, 2.0, lo=1.5, hi=2.5, ago=dt.timedelta(days=1))
    plant(tmp_path, 3.0, ago=dt.timedelta(days=9), precision="bf16")
    data = json.loads(path.read_text())
    old_key = json.dumps([socket.gethostname(), cpu_model(), None, "fp32", str(torch.__version__)])  # format 1
    data[old_key] = {"tflops": 9.0}
    path.write_text(json.dumps(data))
    got = {(e.key.get("precision"), e.state): e for e in peak_cache.cache_entries(tmp_path)}
    assert set(got) == {("fp32", "fresh"), ("bf16", "expired"), (None, "other_format")}
    fresh = got["fp32", "fresh"].peak
    assert (fresh.tflops, fresh.min_tflops, fresh.max_tflops) == (2.0, 1.5, 2.5)
    assert fresh.age_s == pytest.approx(86400, abs=60)
    assert got["fp32", "fresh"].key["num_threads"] == torch.get_num_threads()
    assert got[None, "other_format"].peak is None
    assert peak_cache.clear_cache(tmp_path) == 3 and not path.exists()
    assert peak_cache.clear_cache(tmp_path) == 0 and peak_cache.cache_entries(tmp_path) == []


def test_refreshing_cuda_on_a_node_without_it_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PeakError, match="no CUDA device on this node; measure device .cpu. instead"):
        peak_cache.refresh_peaks("cuda", ("fp32",), tmp_path)
