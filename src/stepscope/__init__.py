"""stepscope: where the time and the memory of a training step go.

The one import name of the project. The repository keeps its parts at its top
level (`orchestrator/`, `workloads/`, `analysis/`, `queries/`); this package holds
symbolic links to them, so that they import as `stepscope.orchestrator`,
`stepscope.workloads`, `stepscope.analysis`, and the SQL ships as
`stepscope/queries`. Two parts every layer uses live here as real files: `errors` (the
error base) and `storage` (the Parquet schema, the store, its layout). See
docs/architecture.md.

For custom workloads::

    from stepscope import Workload

Importing this package imports neither torch nor Ray.
"""

from stepscope.errors import StepscopeError
from stepscope.workloads.api import Workload

__all__ = ["StepscopeError", "Workload", "__version__"]


def __getattr__(name: str) -> str:
    # `stepscope.__version__`, read from the installed metadata only when asked for.
    if name == "__version__":
        from stepscope.storage.schema import version

        return version()
    raise AttributeError(f"module 'stepscope' has no attribute {name!r}")
