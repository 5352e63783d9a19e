"""The intermediate views of queries/intermediate.sql, and the configuration key they hold once."""

from __future__ import annotations

import stepscope.analysis.queries as queries
import stepscope.analysis.warehouse as warehouse
from stepscope.analysis.queries import list_queries, run_query
from stepscope.analysis.warehouse import connect

#: Named queries with one row per trial rather than per configuration.
PER_TRIAL = {"trials"}


def test_the_intermediate_views_are_not_a_named_query():
    assert (queries.sql_dir() / queries.INTERMEDIATE_FILE).is_file()
    assert "intermediate" not in {q.name for q in list_queries()}


def test_ok_trials_carry_their_configuration_key(store, write):
    write.trial("s1", "ok", {"forward": [1.0]}, batch_size=32, gpu="H100")
    write.trial("s1", "oom", {"forward": [1.0]}, trial_index=1, status="oom")
    con = connect(store)
    assert con.execute("select trial_id, config from ok_trials").fetchall() == [
        (
            "ok",
            {
                "sweep_id": "s1", "workload": "mlp", "batch_size": 32, "precision": "fp32",
                "optimizer": "sgd", "config_id": "c-mlp", "gpu_model": "H100", "device_name": "cpu",
            },
        )
    ]  # fmt: skip


def test_measured_steps_are_the_non_warmup_steps_of_ok_trials(store, write):
    write.trial("s1", "ok", {"forward": [50.0, 2.0, 3.0]}, warmup=1)
    write.trial("s1", "failed", {"forward": [7.0, 7.0]}, trial_index=1, status="failed")
    con = connect(store)
    got = con.execute(
        "select trial_id, iteration, duration_ms, config.config_id from measured_steps"
        " where phase = 'forward' order by iteration"
    ).fetchall()
    assert got == [("ok", 1, 2.0, "c-mlp"), ("ok", 2, 3.0, "c-mlp")]
    assert con.execute("select count(*) from measured_steps").fetchone() == (2 * 6,)


def test_a_new_key_column_is_one_edit(store, write, monkeypatch):
    """Add `host` to the key in intermediate.sql alone: every per-configuration query then
    shows it and keeps two trials that differ only by host apart."""
    key = "gpu_model := coalesce(gpu_model, gpu), device_name) as config"
    sql = queries.views_sql()
    assert sql.count(key) == 1, f"queries/{queries.INTERMEDIATE_FILE}: the configuration key moved"
    monkeypatch.setattr(
        warehouse, "views_sql", lambda: sql.replace(key, "gpu_model := coalesce(gpu_model, gpu), device_name, host) as config")
    )
    write.sweep("s1")
    for i, host in enumerate(("node-a", "node-b")):
        write.trial(
            "s1",
            host,
            {"forward": [9.0, 2.0, 3.0]},
            warmup=1,
            trial_index=i,
            host=host,
            device_kind="cuda",
            flops_forward=10**9,
            flops_backward=2 * 10**9,
        )
    con = connect(store)
    per_config = [q for q in list_queries() if q.name not in PER_TRIAL]
    assert per_config
    for query in per_config:
        columns, rows = run_query(con, query.name, {})
        assert "host" in columns, query.name
        hosts = [row[columns.index("host")] for row in rows]
        assert sorted(set(hosts)) == ["node-a", "node-b"], query.name
        assert hosts.count("node-a") == hosts.count("node-b"), query.name


def test_one_board_asked_for_by_two_names_is_one_configuration(store, write):
    """`gpus: [A100]` and `gpus: each` name the same node A100 and A100-SXM4-40GB: trials.gpu
    keeps what was asked, gpu_model what the node is, and the queries group by the latter."""
    write.sweep("s1")
    for i, asked in enumerate(("A100", "A100-SXM4-40GB")):
        write.trial("s1", f"t{i}", {"forward": [2.0, 2.0]}, trial_index=i, gpu=asked, gpu_model="A100-SXM4-40GB")
    con = connect(store)
    columns, rows = run_query(con, "phase_shares", {})
    assert len(rows) == 1 and rows[0][columns.index("trials")] == 2
    assert rows[0][columns.index("gpu_model")] == "A100-SXM4-40GB"
    # Outside Ray (`stepscope trial --gpu`) there is no node: the requested type stands in.
    write.trial("s1", "t2", {"forward": [2.0, 2.0]}, trial_index=2, gpu="H100")
    columns, rows = run_query(connect(store), "phase_shares", {})
    assert sorted(r[columns.index("gpu_model")] for r in rows) == ["A100-SXM4-40GB", "H100"]
