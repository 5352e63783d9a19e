"""stepscope.workloads: what a trial trains and measures, without Ray.

- the protocol for custom workloads: `Workload` (`api.py`; users write
  `from stepscope import Workload`), parameters (`params.py`), `Trial` (`trial.py`);
- the built-ins, one folder each (`builtin/`), and the registry that finds them;
- the measurement code, which imports torch (`measure/`);
- the Parquet schema and store (`storage/`), which every layer may use.

Importing this package does not import torch.
"""

from stepscope.workloads.api import Workload

__all__ = ["Workload"]
