"""What `compare` compares and answers: its axes' names, the metrics, the result, the errors
(the package's docstring says how; `stepscope.analysis.stats` holds the statistics)."""

from __future__ import annotations

from dataclasses import dataclass, field

from stepscope.errors import Field, StepscopeError
from stepscope.storage.schema import PHASES

#: Axes that name the device: comparing by one of them leaves every device column out of
#: the configuration (the point is to put devices side by side).
DEVICE_AXES = frozenset({"device_name", "gpu", "gpu_model", "gpu_variant", "device_uuid", "compute_capability"})
#: Names that mean "the sweep" as an axis: the value is the sweep id (a name may be given
#: as the baseline when it names one sweep).
SWEEP_AXES = frozenset({"sweep", "sweep_id"})
#: The columns a configuration shows first, when they are not the axis.
KEY_COLUMNS = ("workload", "batch_size", "precision", "optimizer")
#: Environment fields whose differences between the baseline's trials and a value's are printed.
ENVIRONMENT = ("device_name", "gpu_variant", "gpu_model", "driver_version", "cuda_version", "cudnn_version",
               "torch_version", "python_version", "stepscope_version", "host")


@dataclass(frozen=True, slots=True)
class Metric:
    """One compared figure: `name` as the `metric` column shows it, what it is made of, and
    which direction is better."""

    name: str
    description: str
    lower_is_better: bool
    #: 'time' (faster/slower) or 'amount' (more/less)
    kind: str = "time"


METRICS: tuple[Metric, ...] = (
    Metric("step_ms", "median step time, ms (a whole step: every phase)", True),
    *(Metric(f"{p}_ms", f"median {p} phase time, ms", True) for p in PHASES),
    Metric("samples_per_s", "throughput of the median step: batch_size / step time", False),
    Metric("mfu", "model FLOPs utilization of the median step: (flops_forward + flops_backward) / step time "
                  "/ peak (the datasheet's, else the measured matmul peak)", False),
    Metric("peak_memory_bytes", "the trial's highest peak_allocated_bytes (CUDA), else peak_rss_bytes (CPU)",
           True, "amount"),
    Metric("energy_j_per_sample", "median board power (NVML) x step time / batch_size, joules", True, "amount"),
)
METRIC_NAMES = tuple(m.name for m in METRICS)
_BY_NAME = {m.name: m for m in METRICS}


#: `compare`'s inputs as its errors name them (its parameters: `compare(con, by, baseline,
#: sweep=, min_effect=, metrics=)`).
BY, BASELINE, SWEEP, MIN_EFFECT_FIELD, METRICS_FIELD = (
    Field("by"), Field("baseline"), Field("sweep"), Field("min_effect"), Field("metrics"))


class CompareError(StepscopeError, ValueError):
    """The axis, the baseline or an option cannot be used on this store: one line naming the
    parameter and the fix."""


@dataclass(slots=True)
class CompareResult:
    """What `compare` found. `rows`, `summary` and `environment` are lists of dicts whose
    keys are `row_columns`, `SUMMARY_COLUMNS` and `ENVIRONMENT_COLUMNS`."""

    axis: str
    baseline: str
    values: list[str]
    row_columns: list[str]
    rows: list[dict]
    summary: list[dict]
    environment: list[dict]
    min_effect: float
    #: What the baseline has that a value lacks: per value, the baseline's configurations it has
    #: no ok trial of, and a value with trials none of which ended ok (GAP_COLUMNS).
    gaps: list[dict] = field(default_factory=list)
    #: The metrics `failing` looks at: step_ms when compared, else every compared metric.
    gate_metrics: list[str] = field(default_factory=lambda: ["step_ms"])
    #: seconds: 'query' (DuckDB running the queries and handing over their rows), 'read'
    #: (that and building the trials from them), 'samples' (the cells' samples), 'stats'
    #: (bootstrap, tests, summary, environment), 'total'
    timings: dict[str, float] = field(default_factory=dict)

    def failing(self, direction: str) -> list[dict]:
        """The rows of the gate's metrics (`gate_metrics`) whose verdict is `direction`
        ('slower', 'faster'; for 'changed' any verdict but `same` and `unsure`). Gaps (a
        configuration the baseline has and a value lacks, a value with no ok trial) are the
        CLI's to add: a gate on 'slower' or 'changed' fails on them too."""
        wanted = {"changed": {"slower", "faster", "more", "less"}}.get(direction, {direction})
        return [r for r in self.rows if r["metric"] in self.gate_metrics and r["verdict"] in wanted]


ROW_STATS = ("metric", "baseline", "value", "baseline_value", "other_value", "ratio", "ci_low", "ci_high",
             "p_value", "unit", "n_baseline", "n_other", "verdict")
SUMMARY_COLUMNS = ("value", "metric", "configs", "geomean_ratio", "ci_low", "ci_high",
                   "faster_or_less", "slower_or_more", "same", "unsure")
ENVIRONMENT_COLUMNS = ("value", "field", "baseline", "other")
GAP_COLUMNS = ("value", "missing_configs", "detail")
