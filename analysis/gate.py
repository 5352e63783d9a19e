"""compare's CI gate (`stepscope compare --fail-on`): does a comparison fail it, and why.

A gate on `slower` fails when some configuration's verdict on the gate's metrics
(`CompareResult.gate_metrics`: step_ms, else every compared metric) is slower than the
baseline beyond `min_effect`; `faster` likewise; `changed` on either. `slower` and `changed`
also fail on a gap: a configuration the baseline has and a value lacks (a regression that
removed a configuration is not a pass). Imports neither Click, Ray nor torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from stepscope.analysis.compare import CompareResult

FailOn = Literal["slower", "faster", "changed"]
FAIL_ON: tuple[str, ...] = get_args(FailOn)

_RELATION = {"slower": "slower than", "faster": "faster than", "changed": "changed from"}


def gate_failures(result: CompareResult, fail_on: FailOn) -> list[str]:
    """Why `result` fails a gate on `fail_on`, one reason each (the failing configurations,
    the missing ones); an empty list when it passes."""
    if fail_on not in _RELATION:
        raise ValueError(f"fail_on: {fail_on!r} is not one of {', '.join(FAIL_ON)}")
    reasons = []
    failing = result.failing(fail_on)
    if failing:
        reasons.append(f"{len(failing)} configuration(s) {_RELATION[fail_on]} the baseline {result.baseline} beyond "
                       f"{result.min_effect:.0%} ({', '.join(result.gate_metrics)})")
    if fail_on != "faster" and result.gaps:
        reasons.append(f"{sum(g['missing_configs'] for g in result.gaps)} configuration(s) of the baseline "
                       f"missing ({', '.join(str(g['value']) for g in result.gaps)})")
    return reasons
