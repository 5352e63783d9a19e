"""Workloads: what a trial trains, and the Ray-free runner that times it.

`from workloads import Workload` is the protocol for custom workloads (CONTRACT.md).
Importing this package does not import torch.
"""

from workloads.api import Workload

__all__ = ["Workload"]
