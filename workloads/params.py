"""Typed parameter declarations and their validation. Torch-free.

Every parameter a spec may set is declared once, with a type, a default, limits
and a one-line help. `stepscope plan` validates against these, and
`stepscope workloads` lists them.
"""

from __future__ import annotations

import math
import reprlib
import struct
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
    default: object  # None: no default; left out of a trial's parameters unless set (`eps`)
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
#: The optimizers that take `eps` (added to the denominator sqrt(v) + eps of every update).
EPS_OPTIMIZERS = ("adam", "adamw")

#: float16's smallest normal number, 2**-14 ~= 6.1e-5 (IEEE 754 binary16: 5 exponent bits,
#: bias 15; https://en.wikipedia.org/wiki/Half-precision_floating-point_format). Below it a
#: value is subnormal (fewer significant bits) or rounds to 0; float16's largest is 65504.
FP16_MIN_NORMAL = 2.0**-14
FP16_MAX = 65504.0
#: Adam/AdamW's eps for a pure `fp16` trial whose spec does not set `eps`. torch's default,
#: 1e-8, rounds to 0 in float16: where a gradient's square underflows too, an update divides
#: by 0 and the first step turns the weights to NaN or Inf (pytorch/pytorch#26218,
#: https://github.com/pytorch/pytorch/issues/26218). 1e-4 is the fix given by a PyTorch
#: author in https://discuss.pytorch.org/t/adam-half-precision-nans/1765, and the smallest
#: power of ten that is a normal float16 number (>= FP16_MIN_NORMAL): the least change to
#: the update that keeps its denominator away from 0.
FP16_ADAM_EPS = 1e-4
DEVICES = ("auto", "cuda", "cpu")

#: Parameters every trial has, whatever its workload (docs/specs.md, "A sweep spec").
COMMON_PARAMS: tuple[Param, ...] = (
    Param("workload", str, None, "a built-in name, or module:function for a custom one"),
    Param("batch_size", int, 32, "samples per step", minimum=1, maximum=INT64_MAX),
    Param("precision", str, "fp32", "numeric precision of the step", choices=PRECISIONS),
    Param("optimizer", str, "adamw", "optimizer the runner builds", choices=OPTIMIZERS),
    Param("lr", float, 1e-3, "learning rate", minimum=0.0),
    # No default: set only where it matters, so that it joins a trial's id (a hash of the
    # resolved parameters) only there; see `resolve_eps`.
    Param("eps", float, None, "Adam/AdamW epsilon, SGD ignores it; unset: torch's 1e-8, "
          "or 1e-4 for fp16 with adam/adamw (1e-8 is 0 in fp16)", minimum=0.0),
    Param("iterations", int, 20, "measured steps", minimum=1, maximum=MAX_STEPS),
    Param("warmup", int, 5, "steps run first and flagged is_warmup", minimum=0, maximum=MAX_STEPS),
    Param("device", str, "auto", "auto picks cuda when present, else cpu", choices=DEVICES),
    Param("seed", int, 0, "seed for torch's generators", minimum=0, maximum=INT64_MAX),
    Param("num_threads", int, 0, "torch CPU threads; 0 keeps what the worker was given", minimum=0,
          maximum=MAX_NUM_THREADS),
    Param("count_flops", bool, True, "count FLOPs and MFU in an untimed pass before the loop"),
)
COMMON_BY_NAME: dict[str, Param] = {p.name: p for p in COMMON_PARAMS}


def fp16_round(value: float) -> float:
    """`value` rounded to the nearest float16 (ties to even), as a float; inf beyond
    float16's range. What `torch.tensor(value, dtype=torch.float16)` holds, without torch."""
    value = float(value)
    try:
        return struct.unpack("<e", struct.pack("<e", value))[0]
    except OverflowError:  # beyond 65504 + half a step: float16 rounds it to inf
        return math.copysign(math.inf, value)


def resolve_eps(params: dict[str, object]) -> None:
    """Fill in or check `eps` for a pure `fp16` trial with Adam/AdamW, in place.

    Where the model (and so the optimizer's state) is float16, an unset `eps` becomes
    FP16_ADAM_EPS, and a set one must be a normal float16 number (2**-14 to 65504 once
    rounded): one that rounds to 0 leaves the update's denominator at 0 and the weights
    NaN after a step; a subnormal one is 0 where denormals are flushed (fast-math kernels,
    `torch.set_flush_denormal`); inf freezes the weights. Other trials keep `eps` only when set.
    Raises ParamError naming `eps`, its value and the fix.
    """
    if params.get("precision") != "fp16" or params.get("optimizer") not in EPS_OPTIMIZERS:
        return
    eps = params.get("eps")
    if eps is None:
        params["eps"] = FP16_ADAM_EPS
        return
    rounded = fp16_round(eps)  # type: ignore[arg-type]  # validated: a float
    if FP16_MIN_NORMAL <= rounded <= FP16_MAX:
        return
    opt = params["optimizer"]
    if rounded == 0:
        why = f"rounds to 0 in fp16, so {opt} divides by 0 and the weights become NaN"
    elif rounded < FP16_MIN_NORMAL:
        why = (f"rounds to {rounded:.4g} in fp16, a subnormal number (0 where denormals are "
               f"flushed), so {opt} may divide by 0")
    else:
        why = f"rounds to inf in fp16, so {opt} never changes the weights"
    raise ParamError("eps", f"{brief(eps)} {why}; use a value from {FP16_MIN_NORMAL:.3g} to {FP16_MAX:g} "
                            f"(unset, it is {FP16_ADAM_EPS:g}), or precision amp_fp16")
