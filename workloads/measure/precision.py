"""What a precision name means for the model, the data and the step: one definition,
used by the timed loop and by the matmul-peak measurement alike.

- `fp32`: FP32 everywhere, TF32 off (matmuls and cuDNN convolutions).
- `tf32`: FP32 tensors, TF32 tensor-core math for matmuls and convolutions.
- `bf16`, `fp16`: the model and floating-point data cast to that dtype.
- `amp_bf16`, `amp_fp16`: FP32 weights, the step under `torch.autocast`; fp16 with
  a `GradScaler` (loss scaling keeps small gradients from flushing to zero).
"""

from __future__ import annotations

import contextlib
from typing import Any


def set_tf32(torch: Any, enabled: bool) -> tuple[bool, bool, str]:
    """Turn TF32 on or off for both matmuls and cuDNN; return the previous
    (matmul.allow_tf32, cudnn.allow_tf32, float32_matmul_precision) for `restore_tf32`."""
    previous = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    return previous


def restore_tf32(torch: Any, previous: tuple[bool, bool, str]) -> None:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous[0], previous[1]
    torch.set_float32_matmul_precision(previous[2])


class Precision:
    """A precision name applied to this process (TF32 mode) and what the step needs:
    `param_dtype` (what the model and floating-point data are cast to), `autocast`
    (a context-manager factory) and `scaler` (a GradScaler, or None)."""

    def __init__(self, torch: Any, name: str, device: Any) -> None:
        self.name = name
        # Set both ways on every trial: a reused worker must not inherit the last trial's mode.
        set_tf32(torch, name == "tf32")
        self.param_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name, torch.float32)
        amp_dtype = {"amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}.get(name)
        self.autocast = (
            (lambda: torch.autocast(device_type=device.type, dtype=amp_dtype))
            if amp_dtype is not None
            else contextlib.nullcontext
        )
        # fp16 autocast needs loss scaling to keep small gradients from flushing to zero.
        self.scaler = torch.amp.GradScaler(device.type) if name == "amp_fp16" else None
