"""Typed parameter declarations and their validation. Torch-free.

Every parameter a spec may set is declared once, with a type, a default, limits
and a one-line help. `stepscope plan` validates against these, and
`stepscope workloads` lists them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from stepscope.errors import StepscopeError


class ParamError(StepscopeError, ValueError):
    """A parameter value is wrong. `key` names it; the message says how to fix it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    type: type  # int, float, str or bool
    default: object
    help: str
    choices: tuple | None = None
    minimum: float | None = None  # inclusive
    maximum: float | None = None  # inclusive

    def validate(self, value: object) -> object:
        """Return `value` as this parameter's type, or raise ParamError naming the fix."""
        value = self._coerce(value)
        if self.choices is not None and value not in self.choices:
            shown = ", ".join(str(c) for c in self.choices)
            raise ParamError(self.name, f"{value!r} is not one of: {shown}")
        if self.minimum is not None and value < self.minimum:
            raise ParamError(self.name, f"{value!r} is below the minimum {_num(self.minimum)}; use a value >= {_num(self.minimum)}")
        if self.maximum is not None and value > self.maximum:
            raise ParamError(self.name, f"{value!r} is above the maximum {_num(self.maximum)}; use a value <= {_num(self.maximum)}")
        return value

    def _coerce(self, value: object) -> object:
        want = _TYPE_NAMES[self.type]
        wrong = ParamError(self.name, f"expected {want}, got {value!r} ({type(value).__name__})")
        if self.type is bool:
            if isinstance(value, bool):
                return value
            raise wrong
        if isinstance(value, bool):  # bool is an int in Python; never accept it as a number
            raise wrong
        if self.type is int:
            if isinstance(value, int):
                return value
            raise wrong
        if self.type is float:
            if isinstance(value, (int, float)):
                out = float(value)
            elif isinstance(value, str):
                # YAML 1.1 reads `1e-3` (no dot) as a string; users mean a number.
                try:
                    out = float(value)
                except ValueError:
                    raise wrong from None
            else:
                raise wrong
            if not math.isfinite(out):
                raise ParamError(self.name, f"expected a finite number, got {value!r}")
            return out
        if self.type is str:
            if isinstance(value, str) and value:
                return value
            raise wrong
        raise AssertionError(f"unsupported parameter type {self.type}")

    def describe_type(self) -> str:
        if self.choices is not None:
            return "|".join(str(c) for c in self.choices)
        return self.type.__name__


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "amp_bf16", "amp_fp16")
OPTIMIZERS = ("sgd", "adam", "adamw")
DEVICES = ("auto", "cuda", "cpu")

#: Parameters every trial has, whatever its workload (the README's "A sweep spec").
COMMON_PARAMS: tuple[Param, ...] = (
    Param("workload", str, None, "a built-in name, or module:function for a custom one"),
    Param("batch_size", int, 32, "samples per step", minimum=1),
    Param("precision", str, "fp32", "numeric precision of the step", choices=PRECISIONS),
    Param("optimizer", str, "adamw", "optimizer the runner builds", choices=OPTIMIZERS),
    Param("lr", float, 1e-3, "learning rate", minimum=0.0),
    Param("iterations", int, 20, "measured steps", minimum=1),
    Param("warmup", int, 5, "steps run first and flagged is_warmup", minimum=0),
    Param("device", str, "auto", "auto picks cuda when present, else cpu", choices=DEVICES),
    Param("seed", int, 0, "seed for torch's generators", minimum=0),
    Param("num_threads", int, 0, "torch CPU threads; 0 keeps what the worker was given", minimum=0),
    Param("count_flops", bool, True, "count FLOPs and MFU in an untimed pass before the loop"),
)
COMMON_BY_NAME: dict[str, Param] = {p.name: p for p in COMMON_PARAMS}
