"""compare's `--fail-on` gate as a library call (`stepscope.analysis.gate`), without Click:
which verdicts fail which gate, and the gaps that fail `slower` and `changed` but not `faster`."""

from __future__ import annotations

import pytest

from stepscope.analysis.compare import CompareResult
from stepscope.analysis.gate import FAIL_ON, gate_failures


def result(verdicts: dict[tuple[str, str], str], gaps: list[dict] = (), gate_metrics=("step_ms",)) -> CompareResult:
    """A comparison of value B against baseline A: one row per (configuration, metric)."""
    rows = [{"workload": config, "metric": metric, "baseline": "A", "value": "B", "verdict": verdict}
            for (config, metric), verdict in verdicts.items()]
    return CompareResult(axis="gpu_model", baseline="A", values=["A", "B"], row_columns=["workload", "metric"],
                         rows=rows, summary=[], environment=[], min_effect=0.05, gaps=list(gaps),
                         gate_metrics=list(gate_metrics))


GAP = {"value": "B", "missing_configs": 2, "detail": "lacks 2 configuration(s) of the baseline"}


def test_the_directions():
    assert FAIL_ON == ("slower", "faster", "changed")


def test_a_slower_step_fails_slower_and_changed_not_faster():
    r = result({("mlp", "step_ms"): "slower", ("gpt", "step_ms"): "same", ("mlp", "samples_per_s"): "less"})
    reason = "1 configuration(s) slower than the baseline A beyond 5% (step_ms)"
    assert gate_failures(r, "slower") == [reason]
    assert gate_failures(r, "faster") == []
    assert gate_failures(r, "changed") == ["1 configuration(s) changed from the baseline A beyond 5% (step_ms)"]


@pytest.mark.parametrize("verdict", ["same", "unsure"])
def test_same_and_unsure_pass_every_gate(verdict):
    r = result({("mlp", "step_ms"): verdict})
    assert all(gate_failures(r, direction) == [] for direction in FAIL_ON)


def test_only_the_gate_metrics_count():
    r = result({("mlp", "step_ms"): "same", ("mlp", "peak_memory_bytes"): "more"},
               gate_metrics=("peak_memory_bytes",))
    assert gate_failures(r, "changed") == ["1 configuration(s) changed from the baseline A beyond 5% (peak_memory_bytes)"]
    assert gate_failures(r, "slower") == []  # `more` memory is a change, not `slower`


def test_a_missing_configuration_fails_slower_and_changed_but_not_faster():
    r = result({("mlp", "step_ms"): "faster"}, gaps=[GAP])
    assert gate_failures(r, "slower") == ["2 configuration(s) of the baseline missing (B)"]
    assert gate_failures(r, "faster") == ["1 configuration(s) faster than the baseline A beyond 5% (step_ms)"]
    assert gate_failures(r, "changed") == ["1 configuration(s) changed from the baseline A beyond 5% (step_ms)",
                                           "2 configuration(s) of the baseline missing (B)"]


def test_an_unknown_direction_is_refused():
    with pytest.raises(ValueError, match="'worse' is not one of slower, faster, changed"):
        gate_failures(result({}), "worse")
