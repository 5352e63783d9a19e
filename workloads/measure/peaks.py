"""The old home of the FLOP-peak code, now `stepscope.workloads.measure.flop_peaks`: its
names, re-exported for the callers that still import them from here (bench/warehouse.py,
tests/orchestrator/test_cli.py, tests/test_errors.py). New code imports `flop_peaks`."""

from stepscope.workloads.measure.flop_peaks import *  # noqa: F403
from stepscope.workloads.measure.flop_peaks import __all__  # noqa: F401
