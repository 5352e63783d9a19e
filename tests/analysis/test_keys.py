"""One configuration key: intermediate.sql's `config` struct and `ConfigKey` are one column
list, field for field and in order; the report and compare both build it."""

from __future__ import annotations

import dataclasses

import pytest

from stepscope.analysis.keys import CONFIG_COLUMNS, ConfigKey
from stepscope.analysis.warehouse import connect


def test_the_sql_key_and_the_dataclass_are_one_column_list(store):
    con = connect(store)  # empty views: the struct's fields are there all the same
    fields = con.execute("select config.* from ok_trials limit 0").description
    assert tuple(f[0] for f in fields) == CONFIG_COLUMNS
    assert CONFIG_COLUMNS == ("sweep_id", "workload", "batch_size", "precision", "optimizer", "config_id", "gpu_model",
                              "device_name")


def test_it_is_frozen_hashable_and_built_from_a_row(store, write):
    write.sweep("s1")
    write.trial("s1", "t1", {"forward": [1.0, 2.0]}, gpu="H100", device_name="dev", config_id="c1")
    cursor = connect(store).execute("select config.*, trial_id from ok_trials")
    row = dict(zip([d[0] for d in cursor.description], cursor.fetchone(), strict=True))
    key = ConfigKey.from_row(row)
    assert key == ConfigKey("s1", "mlp", row["batch_size"], row["precision"], row["optimizer"], "c1", "H100", "dev")
    assert {key: 1}[ConfigKey.from_row(row)] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.workload = "other"  # type: ignore[misc]
    assert key.row_key == ConfigKey.row_key_of(row) == ("s1", "c1", "H100", "dev")
    assert key.panel == "H100" and key.device == "H100 / dev"
    assert dataclasses.replace(key, gpu_model=None, device_name=None).device == ""
    assert dataclasses.replace(key, gpu_model=None, device_name=None).panel == "unknown device"
