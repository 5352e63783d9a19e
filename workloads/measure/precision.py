"""What a precision name means for the model, the data and the step: one definition,
used by the timed loop and by the matmul-peak measurement alike.

- `fp32`: FP32 everywhere, TF32 off (matmuls and cuDNN convolutions and RNNs).
- `tf32`: FP32 tensors, TF32 tensor-core math for matmuls, convolutions and RNNs.
- `bf16`, `fp16`: the model and floating-point data cast to that dtype (pure low
  precision: the optimizer's state is in that dtype too; see `params.FP16_ADAM_EPS`).
- `amp_bf16`, `amp_fp16`: FP32 weights, the step under `torch.autocast`; fp16 with
  a `GradScaler` (loss scaling keeps small gradients from flushing to zero).

TF32 mode has two APIs in torch. The legacy flags (`torch.backends.cuda.matmul.allow_tf32`,
`torch.backends.cudnn.allow_tf32`, `torch.set_float32_matmul_precision`) are all torch had up
to 2.8. torch 2.9 added per-backend, per-operator `fp32_precision` settings ("ieee", "tf32",
"bf16", or "none": inherit from the parent; generic -> backend -> operator), and since then
*reading* a legacy flag raises RuntimeError ("mix of the legacy and new APIs") once
anything set the new one to a value the legacy state disagrees with. Source:
https://docs.pytorch.org/docs/stable/notes/cuda.html#tensorfloat-32-tf32-on-ampere-and-later-devices
and the checks in aten/src/ATen/Context.cpp (`allowTF32CuBLAS`, `float32MatmulPrecision`,
`allowTF32CuDNN`). So where torch has the new API this module reads only it (plus legacy
reads that may fail and are then left alone), and writes both, so that the two agree and a
workload that reads either one during the step sees the trial's mode.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: The fp32_precision settings stepscope reads and writes, as torch names them: (backend, op).
#: Read and written through `torch._C._get_fp32_precision_getter` / `_set_fp32_precision_setter`,
#: which the public attributes (`torch.backends.cuda.matmul.fp32_precision`, ...) wrap: in torch
#: 2.13 the public setter of mkldnn's own default (`torch.backends.mkldnn.fp32_precision`)
#: writes the generic one instead, so it cannot put back what it reads.
_ROOT = ("generic", "all")
_BACKENDS = (("cuda", "all"), ("mkldnn", "all"))
_OPS = (("cuda", "matmul"), ("cuda", "conv"), ("cuda", "rnn"),
        ("mkldnn", "matmul"), ("mkldnn", "conv"), ("mkldnn", "rnn"))
#: (off, on): what each setting becomes for `fp32` and for `tf32`. mkldnn's matmul is not here:
#: `set_float32_matmul_precision` sets it ("ieee" / "tf32"), as the legacy path always did, with
#: what the installed torch accepts. mkldnn's convolutions and RNNs stay IEEE either way (no
#: legacy flag ever enabled TF32 there; a "bf16" left by a workload must not reach a trial).
_MODES = {("cuda", "matmul"): ("ieee", "tf32"), ("cuda", "conv"): ("ieee", "tf32"),
          ("cuda", "rnn"): ("ieee", "tf32"), ("mkldnn", "conv"): ("ieee", "ieee"),
          ("mkldnn", "rnn"): ("ieee", "ieee")}


@dataclass(frozen=True, slots=True)
class Tf32State:
    """A process's TF32 mode as `set_tf32` found it, for `restore_tf32`.

    - `matmul_precision`: `torch.get_float32_matmul_precision()` ("highest", "high",
      "medium"), or None where reading it raised (the new API set a value it disagrees with).
    - `cudnn_allow_tf32`: `torch.backends.cudnn.allow_tf32`, or None where reading it raised.
    - `cublas_allow_tf32`: `torch.backends.cuda.matmul.allow_tf32` on torch without the new
      API (there it is a flag of its own); None on torch with it (it follows matmul_precision).
    - `fp32_precision`: ((backend, op), value) for every setting in `_ROOT`, `_BACKENDS`
      and `_OPS`, as torch >= 2.9 reads it ("ieee", "tf32", "bf16" or "none"; resolved
      through its parents); () before 2.9.
    """

    matmul_precision: str | None
    cudnn_allow_tf32: bool | None
    cublas_allow_tf32: bool | None
    fp32_precision: tuple[tuple[tuple[str, str], str], ...]


def has_fp32_precision_api(torch: Any) -> bool:
    """True on torch >= 2.9, which has `torch.backends.*.fp32_precision`."""
    return hasattr(torch._C, "_get_fp32_precision_getter") and hasattr(torch._C, "_set_fp32_precision_setter")


def read_tf32(torch: Any) -> Tf32State:
    """The process's TF32 mode. Never raises for a mode set by the legacy API, the new
    one, or a mix of both: a legacy read that torch refuses is recorded as None."""
    new = has_fp32_precision_api(torch)
    precision = _try(torch.get_float32_matmul_precision)
    cudnn = _try(lambda: bool(torch.backends.cudnn.allow_tf32))
    cublas = None if new else bool(torch.backends.cuda.matmul.allow_tf32)
    nodes = tuple((node, _get(torch, node)) for node in (_ROOT, *_BACKENDS, *_OPS)) if new else ()
    return Tf32State(precision, cudnn, cublas, nodes)


def set_tf32(torch: Any, enabled: bool) -> Tf32State:
    """Turn TF32 on or off for matmuls (cuBLAS and mkldnn), cuDNN convolutions and RNNs;
    return the previous mode for `restore_tf32`. Never raises for what a workload set before
    (legacy flags, `fp32_precision`, or a mix)."""
    previous = read_tf32(torch)
    with _quiet():  # torch may call the legacy setters deprecated: stepscope sets them on purpose
        # The legacy setters first: each also writes some fp32_precision settings...
        torch.set_float32_matmul_precision("high" if enabled else "highest")
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled
    if previous.fp32_precision:
        # ...then every setting explicitly: allow_tf32 = False leaves cuDNN's at "none", which
        # inherits a "tf32" that a workload set on its parent.
        for node, modes in _MODES.items():
            _set(torch, node, modes[enabled])
    return previous


def restore_tf32(torch: Any, previous: Tf32State) -> None:
    """Put back the mode `set_tf32` (or `read_tf32`) found: the legacy values that could be
    read, then each fp32_precision setting. A setting that read the same as its parent is
    put back as "none" (inherit), so that every setting reads as before and a later change
    of a parent still reaches it."""
    with _quiet():
        # cuBLAS's flag first: on torch < 2.9 setting it also sets matmul_precision ("high").
        if previous.cublas_allow_tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = previous.cublas_allow_tf32
        if previous.cudnn_allow_tf32 is not None:
            torch.backends.cudnn.allow_tf32 = previous.cudnn_allow_tf32
        if previous.matmul_precision is not None:
            torch.set_float32_matmul_precision(previous.matmul_precision)
    if not previous.fp32_precision:
        return
    values = dict(previous.fp32_precision)
    _set(torch, _ROOT, values[_ROOT])
    for node in _BACKENDS:
        # "cuda" has no bf16: torch reads a generic "bf16" as "none" for it.
        inherited = values[_ROOT] if not (node[0] == "cuda" and values[_ROOT] == "bf16") else "none"
        _set(torch, node, "none" if values[node] == inherited else values[node])
    for node in _OPS:
        parent = values[(node[0], "all")]
        _set(torch, node, "none" if values[node] == parent else values[node])


class Precision:
    """A precision name applied to this process (TF32 mode) and what the step needs:
    `param_dtype` (what the model and floating-point data are cast to), `autocast`
    (a context-manager factory) and `scaler` (a GradScaler, or None)."""

    def __init__(self, torch: Any, name: str, device: Any) -> None:
        self.name = name
        self.apply(torch)
        self.param_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name, torch.float32)
        amp_dtype = {"amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}.get(name)
        self.autocast = (
            (lambda: torch.autocast(device_type=device.type, dtype=amp_dtype))
            if amp_dtype is not None
            else contextlib.nullcontext
        )
        # fp16 autocast needs loss scaling to keep small gradients from flushing to zero.
        self.scaler = torch.amp.GradScaler(device.type) if name == "amp_fp16" else None

    def apply(self, torch: Any) -> None:
        """Set this precision's TF32 mode in this process, on or off: a reused worker must
        not inherit the last trial's mode. The runner applies it again once the workload is
        built, so that a builder's own TF32 settings (either API) do not outlive it into the
        step: the trial's `precision` is what the step runs in."""
        set_tf32(torch, self.name == "tf32")


def _get(torch: Any, node: tuple[str, str]) -> str:
    return str(torch._C._get_fp32_precision_getter(*node))


def _set(torch: Any, node: tuple[str, str], value: str) -> None:
    torch._C._set_fp32_precision_setter(*node, value)


def _try(read: Any) -> Any:
    try:
        return read()
    except RuntimeError:  # torch's "mix of the legacy and new APIs"
        return None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield
