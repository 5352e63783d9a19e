"""rows.py turns the typed records into rows the store accepts (`schema.check_rows` refuses
any other key set). That the records' fields, the rows and the views name the schema's
columns is test_columns.py's."""

from __future__ import annotations

from stepscope.storage.schema import TrialStatus, check_rows
from stepscope.workloads.measure import rows
from stepscope.workloads.measure.records import (
    DeviceFacts,
    Measured,
    MemoryUse,
    NvmlIdentity,
    Work,
)
from stepscope.workloads.registry import resolve_params
from stepscope.workloads.trial import Trial


def _trial() -> Trial:
    return Trial(index=0, trial_id="t", repeat=0, gpu=None, params=resolve_params({"workload": "mlp"}))


def _facts() -> DeviceFacts:
    return DeviceFacts(device_kind="cuda", device_uuid="GPU-x", host="h", num_threads=4, python_version="3.11",
                       torch_version="2.13", identity=NvmlIdentity(gpu_variant="H100-SXM-80GB", nvml_unavailable={"ecc_enabled": "Not Supported"}))


def test_rows_from_full_records_are_accepted_by_the_store():
    m = Measured(facts=_facts(), work=Work(flops_forward=10), mem=MemoryUse(param_bytes=4))
    row = rows.trial_row(_trial(), "s", m, TrialStatus.OK, None, rows.now(), "node", 1, pid=7)
    table = check_rows("trials", [row])
    got = table.to_pylist()[0]
    assert got["status"] == "ok" and got["flops_forward"] == 10 and got["param_bytes"] == 4 and got["pid"] == 7
    assert got["device_uuid"] == "GPU-x" and got["device_kind"] == "cuda"
    dev = check_rows("devices", [rows.device_row(m.facts, sweep_id="s", trial_id="t", node_id=None, observed_at=rows.now())])
    assert dev.to_pylist()[0]["gpu_variant"] == "H100-SXM-80GB"
    assert dev.to_pylist()[0]["nvml_unavailable"] == '{"ecc_enabled": "Not Supported"}'


def test_a_trial_that_never_ran_still_makes_a_whole_row():
    row = rows.trial_row(_trial(), "s", Measured(), "timeout", "timed out", rows.now(), None, 3)
    got = check_rows("trials", [row]).to_pylist()[0]
    assert got["status"] == "timeout" and got["device_kind"] is None and got["pid"] is None and got["attempt"] == 3


def test_status_is_a_str_with_its_value():
    assert TrialStatus("oom") is TrialStatus.OOM and TrialStatus.OOM == "oom" and f"{TrialStatus.OOM}" == "oom"
    assert TrialStatus.OOM.is_result and not TrialStatus.TIMEOUT.is_result
