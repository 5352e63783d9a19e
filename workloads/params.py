"""Typed parameter declarations and their validation. Torch-free.

Every parameter a spec may set is declared once, with a type, a default, limits
and a one-line help. `stepscope plan` validates against these, and
`stepscope workloads` lists them.
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass

from stepscope.errors import StepscopeError


class ParamError(StepscopeError, ValueError):
    """A parameter value is wrong. `key` names it; the message says how to fix it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}

#: The range of a stored 64-bit integer (`bigint`: trials.batch_size, trials.seed) and of a
#: 32-bit one (`integer`: trials.iterations, trials.warmup, trials.num_threads, steps.iteration).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MAX = 2**31 - 1
#: The most measured (or warmup) steps a trial may ask for: each step keeps one row per
#: phase in memory until the trial ends, and steps.iteration (warmup included) is 32-bit.
MAX_STEPS = 1_000_000
#: The most torch CPU threads a trial may ask for. Far beyond any machine's cores; above it
#: thread creation fails inside torch (libgomp aborts the process, or it segfaults).
MAX_NUM_THREADS = 1024

_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxother, _BRIEF.maxlong = 3, 60, 60, 40
_BRIEF.maxlist = _BRIEF.maxtuple = _BRIEF.maxdict = _BRIEF.maxset = 4


def brief(value: object, limit: int = 80) -> str:
    """`repr(value)`, cut to `limit` characters with "…": how an error message quotes a
    value, so that a huge one (a megabyte string, an alias bomb) keeps it one short line.
    Bounded work whatever the value: nested lists are shown a few items and levels deep."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4096:
        return f"<an integer of {value.bit_length()} bits>"  # repr() of a huge int is slow or refused
    try:
        # A string is cut at the end (reprlib cuts it in the middle): a name's start says most.
        text = repr(value[:limit]) if isinstance(value, str) else _BRIEF.repr(value)
    except Exception:  # a value whose repr fails (a huge int inside a list)
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
            raise ParamError(self.name, f"{brief(value)} is not one of: {shown}")
        minimum, maximum = self.minimum, self.maximum
        if self.type is int:  # every integer is stored (a column, or trials.params): 64 bits at most
            minimum = INT64_MIN if minimum is None else minimum
            maximum = INT64_MAX if maximum is None else maximum
        if minimum is not None and value < minimum:
            raise ParamError(self.name, f"{brief(value)} is below the minimum {_num(minimum)}; use a value >= {_num(minimum)}")
        if maximum is not None and value > maximum:
            raise ParamError(self.name, f"{brief(value)} is above the maximum {_num(maximum)}; use a value <= {_num(maximum)}")
        return value

    def _coerce(self, value: object) -> object:
        want = _TYPE_NAMES[self.type]
        wrong = ParamError(self.name, f"expected {want}, got {brief(value)} ({type(value).__name__})")
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
                raise ParamError(self.name, f"expected a finite number, got {brief(value)}")
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
    if isinstance(x, int):
        return str(x)  # exact: float(2**63 - 1) would round it up
    return str(int(x)) if x.is_integer() else str(x)


PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "amp_bf16", "amp_fp16")
OPTIMIZERS = ("sgd", "adam", "adamw")
DEVICES = ("auto", "cuda", "cpu")

#: Parameters every trial has, whatever its workload (the README's "A sweep spec").
COMMON_PARAMS: tuple[Param, ...] = (
    Param("workload", str, None, "a built-in name, or module:function for a custom one"),
    Param("batch_size", int, 32, "samples per step", minimum=1, maximum=INT64_MAX),
    Param("precision", str, "fp32", "numeric precision of the step", choices=PRECISIONS),
    Param("optimizer", str, "adamw", "optimizer the runner builds", choices=OPTIMIZERS),
    Param("lr", float, 1e-3, "learning rate", minimum=0.0),
    Param("iterations", int, 20, "measured steps", minimum=1, maximum=MAX_STEPS),
    Param("warmup", int, 5, "steps run first and flagged is_warmup", minimum=0, maximum=MAX_STEPS),
    Param("device", str, "auto", "auto picks cuda when present, else cpu", choices=DEVICES),
    Param("seed", int, 0, "seed for torch's generators", minimum=0, maximum=INT64_MAX),
    Param("num_threads", int, 0, "torch CPU threads; 0 keeps what the worker was given", minimum=0,
          maximum=MAX_NUM_THREADS),
    Param("count_flops", bool, True, "count FLOPs and MFU in an untimed pass before the loop"),
)
COMMON_BY_NAME: dict[str, Param] = {p.name: p for p in COMMON_PARAMS}
