"""The CLI over real stores: query, sql, formats, workloads, trial."""

from __future__ import annotations

import json

import pytest

from stepscope.storage.store import Store
from stepscope.workloads.measure.runner import run_trial
from stepscope.workloads.registry import resolve_params
from stepscope.workloads.trial import Trial


@pytest.fixture
def store(tmp_path):
    """A real store with one sweep of two real (tiny) trials."""
    from stepscope.orchestrator.scheduler import sweep_row
    from stepscope.orchestrator.spec import parse_spec

    st = Store(str(tmp_path / "store"))
    spec = parse_spec("name: tiny\ngrid: {workload: [mlp], batch_size: [4, 8]}\n")
    st.write_sweep(sweep_row(spec, "tiny-1", 2, None))
    for i, bs in enumerate((4, 8)):
        params = resolve_params({"workload": "mlp", "batch_size": bs, "depth": 1, "width": 8,
                                 "input_dim": 8, "iterations": 3, "warmup": 1})
        run_trial(Trial(i, f"t{i}", 0, None, params), "tiny-1", st)
    return str(tmp_path / "store")


def test_sql_formats(cli_runner, store):
    sql = "select trial_id, batch_size, status from trials order by trial_id"
    csv = cli_runner("sql", sql, "--store", store, "--format", "csv")
    assert csv.exit_code == 0 and csv.output.splitlines() == ["trial_id,batch_size,status", "t0,4,ok", "t1,8,ok"]
    js = json.loads(cli_runner("sql", sql, "--store", store, "--format", "json").output)
    assert js == [{"trial_id": "t0", "batch_size": 4, "status": "ok"}, {"trial_id": "t1", "batch_size": 8, "status": "ok"}]
    md = cli_runner("sql", sql, "--store", store, "--format", "markdown").output.splitlines()
    assert md[0] == "| trial_id | batch_size | status |" and md[2] == "| t0 | 4 | ok |"
    table = cli_runner("sql", sql, "--store", store, "--format", "table").output.splitlines()
    assert table[0].split() == ["trial_id", "batch_size", "status"] and table[-1] == "(2 rows)"


def test_store_from_environment(cli_runner, store):
    result = cli_runner("sql", "select count(*) as n from trials", env={"STEPSCOPE_STORE": store})
    assert result.output.splitlines() == ["n", "2"]


def test_bad_sql_gives_duckdbs_message_and_exit_2(cli_runner, store):
    result = cli_runner("sql", "select nosuchcolumn from trials", "--store", store)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: Binder Error:") and "nosuchcolumn" in lines[0]


def test_named_queries_run_and_list(cli_runner, store):
    listed = cli_runner("query", "--list", "--format", "csv").output
    for name in ("phase_breakdown", "trials", "backward_forward_ratio"):
        assert name in listed
        result = cli_runner("query", name, "--store", store, "--format", "csv")
        assert result.exit_code == 0, result.output
        assert len(result.output.splitlines()) > 1, name
    breakdown = cli_runner("query", "phase_breakdown", "--store", store, "--format", "json")
    rows = json.loads(breakdown.output)
    assert {r["phase"] for r in rows} == {"data", "to_device", "forward", "loss", "backward", "optimizer"}


def test_query_errors_exit_2(cli_runner, store):
    r = cli_runner("query", "nosuch", "--store", store)
    assert r.exit_code == 2 and "unknown query 'nosuch'" in r.stderr
    r = cli_runner("query", "trials", "-p", "swep=all", "--store", store)
    assert r.exit_code == 2 and "unknown parameter 'swep'" in r.stderr
    r = cli_runner("query", "trials", "-p", "novalue", "--store", store)
    assert r.exit_code == 2 and "KEY=VALUE" in r.output


def test_empty_is_not_missing(cli_runner, store, tmp_path):
    # Issue 10, item 4: over a real store, a filter that matches nothing is an empty table, exit 0 ...
    r = cli_runner("sql", "select trial_id from trials where status = 'oom'", "--store", store, "--format", "csv")
    assert (r.exit_code, r.output) == (0, "trial_id\n")
    # ... an unknown sweep names the one there, and a store that is not there says so, in one line.
    r = cli_runner("query", "trials", "-p", "sweep=tiny-2", "--store", store)
    assert (r.exit_code, r.stdout) == (2, "")
    assert r.stderr == "Error: query trials: -p sweep=tiny-2: no such sweep in the store; use latest, all, or one of: tiny-1\n"
    typo = str(tmp_path / "stroe")
    r = cli_runner("query", "phase_shares", "--store", typo)
    assert (r.exit_code, r.stdout) == (2, "")
    assert r.stderr == (f"Error: --store {typo}: no store there (nothing was ever written to it); run a sweep first "
                        f"(stepscope run SPEC --store {typo}), or point --store or STEPSCOPE_STORE at the store a "
                        "sweep wrote to\n")


def test_workloads_lists_every_parameter_with_defaults(cli_runner):
    out = cli_runner("workloads", "--format", "csv").output
    for line in ("resnet,depth,18|34|50|101,18,", "gpt,n_layer,int,2,", "common,precision,fp32|tf32|bf16|fp16|amp_bf16|amp_fp16,fp32,"):
        assert line in out, line


def test_trial_index_out_of_range(cli_runner, write_spec, tmp_path):
    spec = write_spec("name: x\ngrid: {workload: [mlp]}\n")
    r = cli_runner("trial", spec, "--index", "3", "--store", str(tmp_path / "s"))
    assert r.exit_code == 2 and "trials 0..0" in r.output
    assert not (tmp_path / "s").exists()


def test_unexpected_errors_are_one_line_without_debug(cli_runner, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    r = cli_runner("sql", "select 1", "--store", str(target))
    assert r.exit_code == 2 and r.stderr.startswith("Error: --store") and "Traceback" not in r.stderr


def test_trial_of_a_gpus_each_spec_needs_its_type(cli_runner, write_spec, tmp_path):
    from stepscope.orchestrator.grid import expand
    from stepscope.orchestrator.spec import load_spec

    spec = write_spec("name: e\nfixed: {depth: 1, width: 8, input_dim: 8, iterations: 1, warmup: 0}\n"
                      "grid: {workload: [mlp]}\ngpus: each\n")
    r = cli_runner("trial", spec, "--index", "0", "--store", str(tmp_path / "s"))
    assert r.exit_code == 2 and "gpus: `each` is resolved by the cluster; give `stepscope trial --gpu TYPE`" in r.stderr
    r = cli_runner("trial", spec, "--index", "0", "--gpu", "H100", "--store", str(tmp_path / "s"))
    assert r.exit_code == 0, r.output
    want = expand(load_spec(spec), ["H100"])[0].trial_id  # the id `run` gives it on an H100
    out = cli_runner("sql", "select trial_id, gpu from trials", "--store", str(tmp_path / "s"), "--format", "csv")
    assert out.output.splitlines()[1] == f"{want},H100"


def test_plan_refuses_a_custom_module_it_cannot_find(cli_runner, write_spec, tmp_path):
    (tmp_path / "workloads").mkdir()
    (tmp_path / "workloads" / "__init__.py").write_text("")
    (tmp_path / "workloads" / "mine.py").write_text("def build(params): ...\n")
    spec = write_spec("name: typo\ngrid:\n  workload: ['workloads.mien:build']\n")
    result = cli_runner("plan", spec)
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"Error: {spec}: workload: cannot find module 'workloads.mien' beside the spec, "
        "in the current directory or on PYTHONPATH"
    )
    ok = write_spec("name: fine\ngrid:\n  workload: ['workloads.mine:build']\n", name="fine.yaml")
    assert cli_runner("plan", ok).exit_code == 0


# ---------------------------------------------------------------- peaks


def plant_peaks(cache, entries):
    """Write cache entries: (precision, median, min, max, days ago) for a made-up CPU node."""
    import datetime as dt

    from stepscope.workloads.measure import flop_peaks as peaks

    now = dt.datetime.now(dt.timezone.utc)
    data = {}
    for precision, med, lo, hi, days in entries:
        key = peaks.cache_key("node-a", "Some CPU", None, precision, "2.13.0", {"num_threads": 4, "cpu_affinity": 8})
        data[key] = {"format": peaks.CACHE_FORMAT, "tflops": med, "min_tflops": lo, "max_tflops": hi, "samples": 12,
                     "measured_at": (now - dt.timedelta(days=days)).isoformat(timespec="seconds")}
    cache.mkdir(parents=True, exist_ok=True)
    (cache / peaks.CACHE_FILE).write_text(json.dumps(data))
    return cache / peaks.CACHE_FILE


def test_peaks_lists_the_cache_with_age_state_and_spread(cli_runner, tmp_path):
    import csv
    import io

    plant_peaks(tmp_path, [("fp32", 0.5, 0.4, 0.55, 2), ("bf16", 1.25, 1.0, 1.3, 9.5)])
    r = cli_runner("peaks", "--format", "csv", env={"STEPSCOPE_CACHE_DIR": str(tmp_path),
                                                     "STEPSCOPE_PEAK_MAX_AGE_DAYS": None})
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.output)))
    got = {row["precision"]: row for row in rows}
    assert set(got) == {"fp32", "bf16"}
    assert got["fp32"]["host"] == "node-a" and got["fp32"]["device"] == "Some CPU"
    assert got["fp32"]["conditions"] == "cpu_affinity=8, num_threads=4"
    assert float(got["fp32"]["age_days"]) == pytest.approx(2, abs=1e-3)
    assert float(got["bf16"]["age_days"]) == pytest.approx(9.5, abs=1e-3)
    assert (got["fp32"]["state"], got["bf16"]["state"]) == ("fresh", "expired")  # the limit is 7 days
    assert float(got["fp32"]["spread_pct"]) == round((0.55 - 0.4) / 0.5 * 100, 1)  # 30.0
    assert float(got["bf16"]["spread_pct"]) == round((1.3 - 1.0) / 1.25 * 100, 1)  # 24.0
    assert float(got["bf16"]["tflops"]) == 1.25 and got["bf16"]["samples"] == "12"
    js = json.loads(cli_runner("peaks", "--format", "json", env={"STEPSCOPE_CACHE_DIR": str(tmp_path)}).output)
    assert [row["precision"] for row in js] == ["fp32", "bf16"] and js[0]["tflops"] == 0.5


def test_peaks_refresh_measures_on_this_node_and_clear_empties(cli_runner, tmp_path):
    env = {"STEPSCOPE_CACHE_DIR": str(tmp_path)}
    r = cli_runner("peaks", "--refresh", "--device", "cpu", "--precision", "bf16", "--precision", "amp_bf16",
                   "--format", "json", env=env)
    assert r.exit_code == 0, r.output
    (row,) = json.loads(r.output)  # amp_bf16 is the bf16 measurement: measured once
    (record,) = json.loads((tmp_path / "matmul_peaks.json").read_text()).values()
    assert row["precision"] == record["precision"] == "bf16" and row["state"] == "fresh"
    assert row["tflops"] == round(record["tflops"], 4) and row["age_days"] < 0.001
    listed = json.loads(cli_runner("peaks", "--format", "json", env=env).output)
    assert [(x["precision"], x["tflops"]) for x in listed] == [("bf16", row["tflops"])]
    r = cli_runner("peaks", "--clear", env=env)
    assert r.exit_code == 0 and r.output == f"Removed 1 measured peak from {tmp_path}.\n"
    assert not (tmp_path / "matmul_peaks.json").exists()
    assert cli_runner("peaks", "--format", "csv", env=env).output.splitlines()[1:] == []


@pytest.mark.parametrize(("args", "message"), [
    (("--refresh", "--clear"), "Error: give --refresh or --clear, not both"),
    (("--device", "cpu"), "Error: --device and --precision go with --refresh"),
    (("--precision", "fp32"), "Error: --device and --precision go with --refresh"),
])
def test_peaks_usage_errors(cli_runner, tmp_path, args, message):
    r = cli_runner("peaks", *args, env={"STEPSCOPE_CACHE_DIR": str(tmp_path)})
    assert r.exit_code == 2 and r.stderr.splitlines()[-1] == message


def test_peaks_with_a_bad_age_limit_is_one_line(cli_runner, tmp_path):
    plant_peaks(tmp_path, [("fp32", 0.5, 0.4, 0.55, 2)])
    r = cli_runner("peaks", env={"STEPSCOPE_CACHE_DIR": str(tmp_path), "STEPSCOPE_PEAK_MAX_AGE_DAYS": "a week"})
    assert r.exit_code == 2
    assert r.stderr == ("Error: STEPSCOPE_PEAK_MAX_AGE_DAYS: 'a week' is not a number of days of 0 or more "
                        "(e.g. 7, 0.5, or inf)\n")


def test_query_takes_sweep_as_an_option_or_a_parameter(cli_runner, store):
    by_param = cli_runner("query", "trials", "-p", "sweep=tiny-1", "--store", store, "--format", "csv")
    by_option = cli_runner("query", "trials", "--sweep", "tiny-1", "--store", store, "--format", "csv")
    assert by_param.exit_code == by_option.exit_code == 0 and by_param.output == by_option.output
    both = cli_runner("query", "trials", "--sweep", "all", "-p", "sweep=all", "--store", store, "--format", "csv")
    assert both.exit_code == 0 and both.output == by_option.output
    r = cli_runner("query", "trials", "--sweep", "all", "-p", "sweep=latest", "--store", store)
    assert (r.exit_code, r.stdout) == (2, "")
    assert r.stderr.splitlines()[-1] == "Error: --sweep all and -p sweep=latest differ: give one of them"


def test_query_params_parse_without_a_store():
    import click

    from stepscope.orchestrator.commands.query import parse_params

    assert parse_params(("sweep=a", "threshold=0.5", "sweep=b")) == {"sweep": "b", "threshold": "0.5"}
    assert parse_params(("threshold=1",), "s1") == {"threshold": "1", "sweep": "s1"}
    assert parse_params(("sweep=s1",), "s1") == {"sweep": "s1"}
    with pytest.raises(click.UsageError, match="--sweep s1 and -p sweep=s2 differ"):
        parse_params(("sweep=s2",), "s1")
    with pytest.raises(click.BadParameter, match="write KEY=VALUE"):
        parse_params(("=x",))


def test_every_sweep_option_is_the_one_option():
    from stepscope.orchestrator.cli import cli
    from stepscope.orchestrator.options import SWEEP_HELP, SWEEP_METAVAR

    helps = {}
    for name in ("query", "compare", "report", "compact"):
        (option,) = [p for p in cli.commands[name].params if p.name == "sweep"]
        assert (option.opts, option.default, option.metavar) == (["--sweep"], None, SWEEP_METAVAR), name
        assert option.help.startswith(SWEEP_HELP + " (default: "), name
        helps[name] = option.help
    assert "(default: all: every sweep that needs it)" in helps["compact"]
    assert all("(default: latest; with --by sweep, every sweep)" in helps[n] for n in ("compare", "report"))


def test_the_sweep_help_says_the_librarys_defaults():
    from stepscope.analysis import sweeps
    from stepscope.orchestrator.options import EVERY_SWEEP, SWEEP_DEFAULT

    assert (SWEEP_DEFAULT, EVERY_SWEEP) == (sweeps.DEFAULT, sweeps.ALL)
