"""The workload protocol: what a workload hands the runner.

The runner owns the loop, so every workload is timed the same way. Torch is only
named in type hints here, so that `stepscope plan` never imports it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch


@dataclass(frozen=True, slots=True)
class Workload:
    """A model and how to feed it.

    - `model`: a `torch.nn.Module` on the CPU; the runner moves it to the device (timed once).
    - `make_batch`: `() -> (inputs, targets)`, CPU tensors; called in the `data` phase.
    - `loss_fn`: `(outputs, targets) -> scalar tensor`; called in the `loss` phase.
    - `make_optimizer`: optional `(parameters) -> torch.optim.Optimizer`; when absent the
      runner builds the spec's `optimizer` with its `lr`.
    """

    model: torch.nn.Module
    make_batch: Callable[[], tuple[Any, Any]]
    loss_fn: Callable[[Any, Any], torch.Tensor]
    make_optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer] | None = None

    def __post_init__(self) -> None:
        for name in ("make_batch", "loss_fn"):
            if not callable(getattr(self, name)):
                raise TypeError(f"Workload.{name} must be callable")
        if self.make_optimizer is not None and not callable(self.make_optimizer):
            raise TypeError("Workload.make_optimizer must be callable or None")
        if not hasattr(self.model, "parameters"):
            raise TypeError("Workload.model must be a torch.nn.Module")


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
