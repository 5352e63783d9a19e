"""The configuration key: what names one configuration, in SQL and in Python alike.

The SQL key is intermediate.sql's `config` struct of `ok_trials` (every parameter but the
seed, on one GPU model and device, in one sweep), which the named queries group, join and
order by and spread with `config.*`. `ConfigKey` is that struct in Python, field for field
and in its order (`CONFIG_COLUMNS`; tests/analysis/test_keys.py holds the two together):
the report builds one per row of `config_step_stats`, and `compare` builds one per trial for
what it keeps equal between the values of its axis (the axis itself blanked, see
`stepscope.analysis.compare`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ConfigKey:
    """One configuration. `config_id` tells apart every parameter but the seed (in the views
    an id of them; in `compare`, which keeps all but its axis equal, those parameters without
    the axis, as JSON); `gpu_model` is the node's board, else the requested `gpu`. A field is
    None where it does not count (compare's axis, a sweep compare pools over)."""

    sweep_id: str | None
    workload: str | None
    batch_size: int | None
    precision: str | None
    optimizer: str | None
    config_id: str | None
    gpu_model: str | None
    device_name: str | None

    @classmethod
    def from_row(cls, row: Mapping) -> ConfigKey:
        """The key of a row that holds the key's columns (a `config.*` spread, or more)."""
        return cls(**{name: row[name] for name in CONFIG_COLUMNS})

    @property
    def row_key(self) -> tuple:
        """What names a configuration in every named query's rows (config_id covers every
        parameter but the seed; utilization leaves out the optimizer, batch_scaling the id)."""
        return (self.sweep_id, self.config_id, self.gpu_model, self.device_name)

    @staticmethod
    def row_key_of(row: Mapping) -> tuple:
        """`row_key` of a named query's row."""
        return (row["sweep_id"], row["config_id"], row["gpu_model"], row["device_name"])

    @property
    def panel(self) -> str:
        """The GPU model it ran on (else the device's name): what the report compares side by side."""
        return self.gpu_model or self.device_name or "unknown device"

    @property
    def device(self) -> str:
        """GPU model and device name as one text, 'A100 / NVIDIA A100-SXM4-40GB' (either
        left out when null, '' when both are), as compare's `device` column shows it."""
        return " / ".join(v for v in (self.gpu_model, self.device_name) if v is not None)


#: The key's columns, in the SQL struct's order: ConfigKey's fields.
CONFIG_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ConfigKey))
