"""The CLI over real stores: query, sql, formats, workloads, trial."""

from __future__ import annotations

import json

import pytest

from stepscope.workloads.measure.runner import run_trial
from stepscope.workloads.registry import resolve_params
from stepscope.workloads.storage.store import Store
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
