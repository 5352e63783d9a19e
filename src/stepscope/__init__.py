"""stepscope: where the time and the memory of a training step go.

The one import name of the project. The repository keeps its parts at its top
level (`orchestrator/`, `workloads/`, `analysis/`, `queries/`); this package holds
symbolic links to them, so that they import as `stepscope.orchestrator`,
`stepscope.workloads`, `stepscope.analysis`, and the SQL ships as
`stepscope/queries`. See the README's "Layout".

For custom workloads::

    from stepscope import Workload

Importing this package imports neither torch nor Ray.
"""

from stepscope.errors import StepscopeError
from stepscope.workloads.api import Workload

__all__ = ["StepscopeError", "Workload"]
