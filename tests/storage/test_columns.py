"""One column list: `stepscope.storage.schema` is it, and everything else that names
columns follows it or fails here, naming the column.

Four places name columns: the schema (Arrow), the typed records (`measure/records.py`: one
field per column they fill), the writer (`measure/rows.py`: the rows built from them) and
the staging views (`queries/views.sql`: one cast per column, read here, never written).
`drift()` compares the last three with the schema and says every difference by name; the
drift test wants none. The last test adds a `trials` column the way a change would, in a
test: one schema edit plus its value (a record field); nothing in rows.py, and what drift()
then names is all that is left to edit.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stepscope.storage import schema
from stepscope.storage.schema import PHASES, TrialStatus
from stepscope.storage.store import Store
from stepscope.workloads.measure import records, rows
from stepscope.workloads.measure.records import (
    DEVICE_ONLY_FIELDS,
    DeviceFacts,
    DeviceSamples,
    Measured,
    MemoryUse,
    NvmlIdentity,
    Work,
)
from stepscope.workloads.registry import resolve_params
from stepscope.workloads.trial import Trial

VIEWS_SQL = Path(__file__).resolve().parents[2] / "queries" / "views.sql"
#: Where views.sql casts each table's columns: a view, or for steps the macro the view calls.
VIEW_OF = {"sweeps": "sweeps", "trials": "trials", "steps": "committed_steps", "devices": "devices",
           "summaries": "summaries"}
#: Columns a view leaves out on purpose: the warehouse reads only the current summary version.
NOT_IN_VIEW = {"summaries": {"summary_version"}}
#: Record fields that fill no column of their own (views of other fields, or what decides one).
NOT_COLUMNS = {
    NvmlIdentity: {"ecc_pending", "mig_pending", "device_uuid", "is_mig_instance", "mig_parent_sm_count"},
}
#: The record types whose fields are consecutive `trials` columns, in the schema's order.
TRIAL_RECORDS = (Work, MemoryUse, DeviceSamples)

# Arrow type -> the DuckDB casts a view may give it (a wider integer is fine).
_INTS = {pa.int8(): 8, pa.int16(): 16, pa.int32(): 32, pa.int64(): 64}
_SQL_INTS = {"tinyint": 8, "smallint": 16, "integer": 32, "int": 32, "bigint": 64}
_SQL_OTHER = {pa.string(): {"varchar"}, pa.float64(): {"double"}, pa.bool_(): {"boolean"},
              pa.list_(pa.float64()): {"double[]"}}
# Python annotation -> Arrow types a record field of it may fill.
_PY_TYPES = {int: tuple(_INTS), float: (pa.float64(),), str: (pa.string(),), bool: (pa.bool_(),)}


def view_casts(sql: str) -> dict[str, list[tuple[str, str]]]:
    """Each view's (and macro's) casts in views.sql, in order: {name: [(column, sql type)]}."""
    out = {}
    for m in re.finditer(r"create or replace (?:view|macro) (\w+)(.*?)(?=create or replace |\Z)", sql, re.S | re.I):
        casts = re.findall(r'cast\((?:\w+\.)?"?(\w+)"? as ([\w\[\] ]+?)\) as "?(\w+)"?', m.group(2), re.I)
        out[m.group(1)] = [(alias, sql_type.lower()) for column, sql_type, alias in casts if column == alias]
    return out


def _sql_type_fits(arrow: pa.DataType, sql_type: str) -> bool:
    if arrow in _INTS:
        return _SQL_INTS.get(sql_type, 0) >= _INTS[arrow]
    if pa.types.is_timestamp(arrow):
        return sql_type in ("timestamptz", "timestamp with time zone")
    return sql_type in _SQL_OTHER.get(arrow, ())


def _field_types(record: type) -> dict[str, tuple]:
    """A record's fields' Arrow types as its annotations allow them (`int | None` -> ints)."""
    hints = typing.get_type_hints(record, vars(records))
    out = {}
    for name, hint in hints.items():
        base = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        out[name] = _PY_TYPES.get(base[0], ())
    return out


def _full_trial() -> tuple[Trial, Measured]:
    trial = Trial(index=0, trial_id="t", repeat=0, gpu=None, params=resolve_params({"workload": "mlp"}))
    facts = DeviceFacts(device_kind="cuda", device_uuid="GPU-x", host="h", num_threads=4, python_version="3.11",
                        torch_version="2.13", identity=NvmlIdentity(gpu_variant="H100-SXM-80GB"))
    m = Measured(facts=facts, device_ms=[[1.0] * len(PHASES)], gaps_ms=[[0.0] * len(PHASES)],
                 host_ns=[tuple(range(2 * len(PHASES)))], phase_memory_peaks=[((1,) * len(PHASES),) * 4])
    return trial, m


def drift(views_sql: str | None = None, trial_records: tuple[type, ...] = TRIAL_RECORDS,
          full: tuple[Trial, Measured] | None = None) -> list[str]:
    """Every difference between the schema and the records (`trial_records`: those that fill
    consecutive trials columns), the writer (its rows from `full`, a trial and what it
    measured) and the views (`views_sql`, default queries/views.sql)."""
    tables, problems = schema.TABLES, []
    trials = tables["trials"]

    # records.py: fields named after the columns they fill, of a type that fits them.
    for record in trial_records:
        fields = [f.name for f in dataclasses.fields(record)]
        for name in fields:
            if name not in trials.names:
                problems.append(f"records.py: {record.__name__}.{name} is no trials column")
        start = trials.names.index(fields[0]) if fields[0] in trials.names else 0
        if trials.names[start:start + len(fields)] != fields:
            problems.append(f"records.py: {record.__name__}'s fields are not trials columns "
                            f"{trials.names[start:start + len(fields)]} in the schema's order")
    placed = {
        **{(r, "trials"): [f.name for f in dataclasses.fields(r)] for r in trial_records},
        (DeviceFacts, "trials"): [f.name for f in dataclasses.fields(DeviceFacts) if f.name not in DEVICE_ONLY_FIELDS],
        (DeviceFacts, "devices"): [f.name for f in dataclasses.fields(DeviceFacts)
                                   if f.name in tables["devices"].names],
        (NvmlIdentity, "devices"): [f.name for f in dataclasses.fields(NvmlIdentity)
                                    if f.name not in NOT_COLUMNS[NvmlIdentity] | {"nvml_unavailable"}],
    }
    for (record, table), names in placed.items():
        types = _field_types(record)
        for name in names:
            if name not in tables[table].names:
                problems.append(f"records.py: {record.__name__}.{name} is no {table} column")
            elif tables[table].field(name).type not in types[name]:
                problems.append(f"records.py: {record.__name__}.{name} cannot hold {table}.{name}, "
                                f"{tables[table].field(name).type}")
    for name in sorted(DEVICE_ONLY_FIELDS - {"identity"}):
        if name not in tables["devices"].names:
            problems.append(f"records.py: DeviceFacts.{name} is no devices column")

    # rows.py: the rows made from full records have exactly the schema's columns.
    trial, m = full or _full_trial()
    made = {
        "trials": rows.trial_row(trial, "s", m, TrialStatus.OK, None, rows.now(), "n", 1, pid=1),
        "steps": rows.step_rows(trial, "s", m)[0],
        "devices": rows.device_row(m.facts, sweep_id="s", trial_id="t", node_id=None, observed_at=rows.now()),
    }
    for table, row in made.items():
        for name in tables[table].names:
            if name not in row:
                problems.append(f"rows.py: the {table} row has no {name}")
        for name in row:
            if name not in tables[table].names:
                problems.append(f"rows.py: the {table} row has {name}, no {table} column")

    # views.sql: one cast per column, in the schema's order, to a type that holds it.
    casts = view_casts(VIEWS_SQL.read_text(encoding="utf-8") if views_sql is None else views_sql)
    for table, view in VIEW_OF.items():
        have = dict(casts.get(view, []))
        want = [n for n in tables[table].names if n not in NOT_IN_VIEW.get(table, set())]
        for name in want:
            if name not in have:
                problems.append(f"queries/views.sql: {view} casts no {table}.{name}")
            elif not _sql_type_fits(tables[table].field(name).type, have[name]):
                problems.append(f"queries/views.sql: {view} casts {table}.{name} "
                                f"({tables[table].field(name).type}) as {have[name]}")
        for name in have:
            if name not in tables[table].names:
                problems.append(f"queries/views.sql: {view} casts {name}, no {table} column")
        if [n for n, _ in casts.get(view, []) if n in want] != [n for n in want if n in have]:
            problems.append(f"queries/views.sql: {view} lists {table}' columns in another order than the schema")
    return problems


def test_the_schema_records_rows_and_views_name_the_same_columns():
    assert drift() == []


def test_drift_names_the_column_that_differs():
    sql = VIEWS_SQL.read_text(encoding="utf-8")
    assert drift(sql.replace("    cast(final_loss as double) as final_loss,\n", "")) == [
        "queries/views.sql: trials casts no trials.final_loss"]
    assert drift(sql.replace("cast(seed as bigint) as seed", "cast(seed as integer) as seed")) == [
        "queries/views.sql: trials casts trials.seed (int64) as integer"]


def test_a_new_trials_column_is_one_schema_edit_plus_its_value(tmp_path, monkeypatch):
    # The one edit: the column, in schema.py, beside the columns of the record that fills it.
    trials = schema.TRIALS
    at = trials.get_field_index("mfu_flag") + 1
    new = trials.insert(at, pa.field("peak_tflops_sustained", pa.float64()))
    monkeypatch.setitem(schema.TABLES, "trials", new)
    # Its value: a field of the record that measures it (here a stand-in for Work with it).
    work = dataclasses.make_dataclass("Work", [("peak_tflops_sustained", float | None, None)], bases=(Work,),
                                      frozen=True)

    trial, m = _full_trial()
    m.work = work(flops_forward=10, peak_tflops_sustained=412.5)
    row = rows.trial_row(trial, "s", m, TrialStatus.OK, None, rows.now(), None, 1)  # rows.py unchanged
    store = Store(str(tmp_path))
    store.write_trial("s", "t", row, rows.step_rows(trial, "s", m), [])
    (stored,) = pq.read_table(tmp_path / "trials" / "sweep_id=s" / "t.parquet").to_pylist()
    assert stored["peak_tflops_sustained"] == 412.5 and list(stored) == new.names
    # What is left is the view's cast, named (queries/views.sql lists its casts by hand).
    assert drift(trial_records=(work, MemoryUse, DeviceSamples), full=(trial, m)) == [
        "queries/views.sql: trials casts no trials.peak_tflops_sustained"]


def test_without_its_value_the_store_refuses_the_row_naming_the_column(monkeypatch):
    new = schema.TRIALS.append(pa.field("peak_tflops_sustained", pa.float64()))
    monkeypatch.setitem(schema.TABLES, "trials", new)
    trial, m = _full_trial()
    row = rows.trial_row(trial, "s", m, TrialStatus.OK, None, rows.now(), None, 1)
    with pytest.raises(ValueError, match=r"missing columns \['peak_tflops_sustained'\]"):
        schema.check_rows("trials", [row])
