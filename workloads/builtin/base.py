"""What a built-in workload declares: its name, parameters and checks. Torch-free.

Each built-in is one folder under `workloads/builtin/`: its `__init__.py` holds an
`INFO = BuiltinInfo(...)` (read by `stepscope plan` and `stepscope workloads`,
which import neither torch nor the model), and its `model.py` holds
`build(params) -> Workload` (imported only when a trial builds it). Adding a
built-in is adding a folder: `stepscope.workloads.registry` finds it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from stepscope.workloads.params import Param


@dataclass(frozen=True, slots=True)
class BuiltinInfo:
    """A built-in workload's declaration.

    - `name`: what a spec writes as `workload:`.
    - `package`: the folder's import name; its `model` module has `build`.
    - `params`: the workload's own parameters (the common ones are in `params.COMMON_PARAMS`).
    - `order`: where `stepscope workloads` lists it (ties by name).
    - `check`: optional `(resolved params) -> None` that raises `ParamError` for
      combinations no single parameter can refuse (gpt: d_model a multiple of n_head).
    - `analytic_flops`: optional `(resolved params) -> int`, a closed-form count of one
      training step's FLOPs, stored as `trials.flops_analytic` beside the counted one.
    """

    name: str
    package: str
    description: str
    params: tuple[Param, ...]
    order: int = 100  # position in `stepscope workloads` (then by name): smallest model first
    check: Callable[[Mapping[str, object]], None] | None = None
    analytic_flops: Callable[[Mapping[str, object]], int] | None = None

    @property
    def module(self) -> str:
        """The module that builds the workload (imports torch)."""
        return f"{self.package}.model"

    @property
    def params_by_name(self) -> dict[str, Param]:
        return {p.name: p for p in self.params}
