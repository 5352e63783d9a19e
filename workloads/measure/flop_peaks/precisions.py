"""The precisions a FLOP peak is given in, and the error every part of `flop_peaks` raises.

Stepscope precisions map to datasheet rows as follows: fp32 -> FP32 (non-tensor, CUDA
cores: stepscope's fp32 turns TF32 off), tf32 -> TF32 Tensor Core, bf16 and amp_bf16 ->
BF16 Tensor Core, fp16 and amp_fp16 -> FP16 Tensor Core with FP32 accumulate (what
PyTorch's half GEMMs use).
"""

from __future__ import annotations

from stepscope.errors import StepscopeError


class PeakError(StepscopeError, ValueError):
    """A peak cannot be given or used as asked; the message says why."""


TABLE_PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "fp8")
_ALIASES = {"amp_bf16": "bf16", "amp_fp16": "fp16"}
#: The precisions a plain torch.matmul can be timed in (the datasheet rows but fp8).
MEASURABLE = ("fp32", "tf32", "bf16", "fp16")


def canonical_precision(precision: str) -> str:
    """The datasheet row a stepscope precision is measured against."""
    p = _ALIASES.get(precision, precision)
    if p not in TABLE_PRECISIONS:
        raise PeakError(f"precision: {precision!r} is not one of fp32, tf32, bf16, fp16, amp_bf16, amp_fp16, fp8")
    return p
