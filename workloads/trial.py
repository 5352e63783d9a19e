"""Trial: one point of a sweep, fully resolved. The record the orchestrator hands a
worker (`stepscope.orchestrator.grid.expand` makes it, `stepscope.workloads.measure.runner`
runs it). Torch-free and Ray-free: it is pickled to Ray workers and forked trial processes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Trial:
    """One point of a sweep, fully resolved: what a worker needs to run it."""

    index: int  # position in the expanded sweep (`stepscope trial --index`)
    trial_id: str  # stable hash of params, gpu and repeat
    repeat: int
    gpu: str | None  # requested accelerator type; None = any
    params: dict[str, Any]  # every parameter, defaults filled in

    @property
    def config_id(self) -> str:
        """What is measured, the seed aside: trials that differ only by seed or
        repeat share it, so queries can pool them and keep everything else apart."""
        doc = json.dumps({k: v for k, v in self.params.items() if k != "seed"}, sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        p = self.params
        gpu = f" on {self.gpu}" if self.gpu else ""
        rep = f" #{self.repeat}" if self.repeat else ""
        return f"{p['workload']} bs={p['batch_size']} {p['precision']}{gpu}{rep}"
