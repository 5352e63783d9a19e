"""The workload protocol: what a workload hands the runner.

The runner owns the loop, so every workload is timed the same way. Torch is only
named in type hints here, so that `stepscope plan` never imports it.
"""

from __future__ import annotations

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
