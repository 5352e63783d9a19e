"""Workloads: what a trial trains, and the Ray-free runner that times it.

`from stepscope import Workload` is the protocol for custom workloads (CONTRACT.md).
Importing this package does not import torch.
"""

from stepscope.workloads.api import Workload

__all__ = ["Workload"]
