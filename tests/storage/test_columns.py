"""One column list: `stepscope.storage.schema` is it, and everything else that names
columns follows it or fails here, naming the column.

Three places name columns: the schema (Arrow), the typed records (`measure/records.py`: one
field per column they fill) and the writer (`measure/rows.py`: the rows built from them). The
views follow the schema by construction: the warehouse selects every schema column, cast to
the DuckDB type of its Arrow type (`warehouse.duckdb_type`), and queries/views.sql names none
it passes through. `drift()` compares the records, the rows and the views a real warehouse
shows (`describe`) with the schema and says every difference by name; the drift test wants
none. The last tests add a `trials` column the way a change would, in a test: one schema
edit plus its value (a record field); nothing in rows.py or views.sql, and drift() is empty.
"""

from __future__ import annotations

import dataclasses
import tempfile
import typing
import warnings

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stepscope.analysis import warehouse
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

#: The views that show each table's columns (steps: both views the committed_steps macro makes).
VIEWS_OF = {"sweeps": ("sweeps",), "trials": ("trials",), "steps": ("steps", "unsummarized_steps"),
            "devices": ("devices",), "summaries": ("summaries",)}
#: Columns a view leaves out on purpose: the warehouse reads only the current summary version.
NOT_IN_VIEW = {"summaries": {"summary_version"}}
#: Record fields that fill no column of their own (views of other fields, or what decides one).
NOT_COLUMNS = {
    NvmlIdentity: {"ecc_pending", "mig_pending", "device_uuid", "is_mig_instance", "mig_parent_sm_count"},
}
#: The record types whose fields are consecutive `trials` columns, in the schema's order.
TRIAL_RECORDS = (Work, MemoryUse, DeviceSamples)

_INTS = (pa.int8(), pa.int16(), pa.int32(), pa.int64())
# Python annotation -> Arrow types a record field of it may fill.
_PY_TYPES = {int: tuple(_INTS), float: (pa.float64(),), str: (pa.string(),), bool: (pa.bool_(),)}


def sql_type(arrow_type: str) -> str:
    """A DuckDB type as `describe` writes it (`timestamptz` -> TIMESTAMP WITH TIME ZONE)."""
    return str(duckdb.sqltype(arrow_type))


def view_columns(store: str | None = None) -> dict[str, list[tuple[str, str]]]:
    """Each view of VIEWS_OF as a real warehouse over `store` (default: an empty one) shows it:
    {view: [(column, DuckDB type)]}, in order."""
    with tempfile.TemporaryDirectory() as empty, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a skipped file is no column
        con = warehouse.connect(store or empty)
        views = {v for vs in VIEWS_OF.values() for v in vs}
        return {v: [(r[0], r[1]) for r in con.execute(f"describe {v}").fetchall()] for v in sorted(views)}


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


def drift(trial_records: tuple[type, ...] = TRIAL_RECORDS, full: tuple[Trial, Measured] | None = None,
          store: str | None = None) -> list[str]:
    """Every difference between the schema and the records (`trial_records`: those that fill
    consecutive trials columns), the writer (its rows from `full`, a trial and what it
    measured) and the views of a real warehouse over `store` (default: an empty one)."""
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

    # The views: the schema's columns, in its order, each of its mapped DuckDB type.
    try:
        shown = view_columns(store)
    except TypeError as exc:  # a schema type with no DuckDB type
        return [*problems, f"analysis/warehouse.py: {exc}"]
    for table, views in VIEWS_OF.items():
        fields = [f for f in tables[table] if f.name not in NOT_IN_VIEW.get(table, set())]
        want = {f.name: sql_type(warehouse.duckdb_type(table, f)) for f in fields}
        for view in views:
            have = dict(shown[view])
            for name, typ in want.items():
                if name not in have:
                    problems.append(f"the {view} view has no {table}.{name}")
                elif have[name] != typ:
                    problems.append(f"the {view} view shows {table}.{name} ({tables[table].field(name).type}) "
                                    f"as {have[name]}, not {typ}")
            for name in have:
                if name not in want:
                    problems.append(f"the {view} view shows {name}, no {table} column")
            if [n for n, _ in shown[view] if n in want] != [n for n in want if n in have]:
                problems.append(f"the {view} view lists {table}' columns in another order than the schema")
    return problems


def test_the_schema_records_rows_and_views_name_the_same_columns():
    assert drift() == []


def test_every_type_the_schema_uses_has_its_duckdb_type():
    types = {(table, f.name): warehouse.duckdb_type(table, f) for table, t in schema.TABLES.items() for f in t}
    used = {schema.TABLES[table].field(name).type: typ for (table, name), typ in types.items()}
    # Narrow integers read as INTEGER, so arithmetic on them does not overflow (phase_index: int8).
    assert used == {pa.int8(): "integer", pa.int32(): "integer", pa.int64(): "bigint", pa.float64(): "double",
                    pa.string(): "varchar", pa.bool_(): "boolean", pa.timestamp("us", tz="UTC"): "timestamptz",
                    pa.list_(pa.float64()): "double[]"}
    assert types["steps", "phase_index"] == "integer"
    with pytest.raises(TypeError, match=r"^trials\.peak_w: no DuckDB type for Arrow type float; give it one in "
                                        r"stepscope\.analysis\.warehouse\._DUCKDB_TYPES$"):
        warehouse.duckdb_type("trials", pa.field("peak_w", pa.float32()))
    with pytest.raises(TypeError, match=r"^devices\.seen_at: no DuckDB type for Arrow type timestamp\[us\]"):
        warehouse.duckdb_type("devices", pa.field("seen_at", pa.timestamp("us")))  # no time zone: no instant


def test_drift_names_the_column_that_differs(monkeypatch):
    # A view that leaves a column out, or shows it as another type.
    sql = warehouse.views_sql()
    dropped = sql.replace("select * exclude (attempt_rank)", "select * exclude (attempt_rank, final_loss)")
    monkeypatch.setattr(warehouse, "views_sql", lambda: dropped)
    assert drift() == ["the trials view has no trials.final_loss"]
    retyped = sql.replace("select * from raw_sweeps", "select * replace (cast(trial_count as bigint) as trial_count) "
                                                      "from raw_sweeps")
    monkeypatch.setattr(warehouse, "views_sql", lambda: retyped)
    assert drift() == ["the sweeps view shows sweeps.trial_count (int32) as BIGINT, not INTEGER"]
    monkeypatch.undo()
    # A record field of a type that cannot hold its column.
    retyped_work = dataclasses.make_dataclass("Work", [("achieved_tflops", str | None, None)], bases=(Work,),
                                              frozen=True)
    assert drift(trial_records=(retyped_work, MemoryUse, DeviceSamples)) == [
        "records.py: Work.achieved_tflops cannot hold trials.achieved_tflops, double"]
    # A schema type the warehouse has no DuckDB type for (a sweeps column: no record fills it).
    at = schema.SWEEPS.get_field_index("trial_count")
    monkeypatch.setitem(schema.TABLES, "sweeps", schema.SWEEPS.set(at, pa.field("trial_count", pa.uint32())))
    assert drift() == ["analysis/warehouse.py: sweeps.trial_count: no DuckDB type for Arrow type uint32; "
                       "give it one in stepscope.analysis.warehouse._DUCKDB_TYPES"]


def _add_sustained_peak(monkeypatch) -> tuple[pa.Schema, type]:
    # The one edit: the column, in schema.py, beside the columns of the record that fills it.
    trials = schema.TRIALS
    at = trials.get_field_index("mfu_flag") + 1
    new = trials.insert(at, pa.field("peak_tflops_sustained", pa.float64()))
    monkeypatch.setitem(schema.TABLES, "trials", new)
    # Its value: a field of the record that measures it (here a stand-in for Work with it).
    work = dataclasses.make_dataclass("Work", [("peak_tflops_sustained", float | None, None)], bases=(Work,),
                                      frozen=True)
    return new, work


def test_a_new_trials_column_is_one_schema_edit_plus_its_value(tmp_path, monkeypatch):
    new, work = _add_sustained_peak(monkeypatch)
    trial, m = _full_trial()
    m.work = work(flops_forward=10, peak_tflops_sustained=412.5)
    row = rows.trial_row(trial, "s", m, TrialStatus.OK, None, rows.now(), None, 1)  # rows.py unchanged
    store = Store(str(tmp_path))
    store.write_trial("s", "t", row, rows.step_rows(trial, "s", m), [])
    (stored,) = pq.read_table(tmp_path / "trials" / "sweep_id=s" / "t.parquet").to_pylist()
    assert stored["peak_tflops_sustained"] == 412.5 and list(stored) == new.names
    # Nothing left to edit: the views show it (views.sql unchanged), with its value.
    assert drift(trial_records=(work, MemoryUse, DeviceSamples), full=(trial, m), store=str(tmp_path)) == []
    con = warehouse.connect(str(tmp_path))
    assert [r[0] for r in con.execute("describe trials").fetchall()] == new.names
    assert con.execute("select trial_id, peak_tflops_sustained from trials").fetchall() == [("t", 412.5)]


def test_a_file_written_before_the_new_column_reads_it_as_null(tmp_path, monkeypatch):
    trial, m = _full_trial()
    row = rows.trial_row(trial, "s", m, TrialStatus.OK, None, rows.now(), None, 1)
    Store(str(tmp_path)).write_trial("s", "t", row, rows.step_rows(trial, "s", m), [])
    _add_sustained_peak(monkeypatch)
    con = warehouse.connect(str(tmp_path))
    assert con.execute("select trial_id, peak_tflops_sustained from trials").fetchall() == [("t", None)]
    assert dict(con.execute("select column_name, column_type from (describe trials)").fetchall())[
        "peak_tflops_sustained"] == "DOUBLE"


def test_without_its_value_the_store_refuses_the_row_naming_the_column(monkeypatch):
    new = schema.TRIALS.append(pa.field("peak_tflops_sustained", pa.float64()))
    monkeypatch.setitem(schema.TABLES, "trials", new)
    trial, m = _full_trial()
    row = rows.trial_row(trial, "s", m, TrialStatus.OK, None, rows.now(), None, 1)
    with pytest.raises(ValueError, match=r"missing columns \['peak_tflops_sustained'\]"):
        schema.check_rows("trials", [row])
