"""FLOPs of one training step, counted in a separate pass that is never timed.

Counting runs every aten op of a step through a dispatch mode
(`torch.utils.flop_counter.FlopCounterMode`), which costs Python work per op:
it must never share a loop with the timer. On the meta device it costs neither
memory nor arithmetic either, since shapes are all a FLOP formula needs, so even
a model too big for this host can be counted here.

The conventions are FlopCounterMode's, which are also those of MFU as usually
reported (PaLM appendix B, nanoGPT `estimate_mfu`):

- a multiply-add is 2 FLOPs;
- only matmul-class ops are counted: mm, addmm, bmm, baddbmm, convolution and
  its backward, the fused attention kernels. Elementwise ops, normalisation,
  softmax, pooling and the loss cost a few FLOPs per element and are left out;
- attention runs under the MATH SDPA backend, where it is two bmm's the counter
  sees, whatever kernel the timed step picks (the CPU's fused kernel has no
  formula). Both count the full T x T score matrix, even with `is_causal=True`:
  a causal kernel that skips the masked half does about half that work;
- the optimizer step is not counted.

A built-in may declare a closed-form count to check this one against
(`BuiltinInfo.analytic_flops`; gpt's is in `stepscope.workloads.builtin.gpt`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from stepscope.errors import one_line
from stepscope.workloads.api import Workload
from stepscope.workloads.measure.batch import call_model, to_device

DEVICES = ("meta", "cpu")  # tried in this order

# Ops the counter has no formula for, but whose cost is linear in their tensor
# sizes, so that leaving them out is the convention, not a hole. Views and ops
# tagged pointwise or reduction are recognised from their tags; these are the
# rest, by overload packet name.
LINEAR_COST_OPS = frozenset(
    {
        # creating, copying and gathering memory: no arithmetic
        "aten.empty", "aten.empty_like", "aten.empty_strided", "aten.zeros",
        "aten.zeros_like", "aten.ones", "aten.ones_like", "aten.full", "aten.full_like",
        "aten.scalar_tensor", "aten.arange", "aten.fill_", "aten.zero_", "aten.copy_",
        "aten._to_copy", "aten.clone", "aten._unsafe_view", "aten.cat", "aten.stack",
        "aten.tril", "aten.triu", "aten.index_select", "aten.gather", "aten.embedding",
        "aten.embedding_dense_backward", "aten._local_scalar_dense",
        # normalisation, softmax, dropout and losses: a few FLOPs per element
        "aten.native_batch_norm", "aten._native_batch_norm_legit",
        "aten._native_batch_norm_legit_no_training", "aten.native_batch_norm_backward",
        "aten.native_layer_norm", "aten.native_layer_norm_backward",
        "aten.native_group_norm", "aten.native_group_norm_backward",
        "aten._softmax", "aten._safe_softmax", "aten._softmax_backward_data",
        "aten._log_softmax", "aten._log_softmax_backward_data",
        "aten.native_dropout", "aten.native_dropout_backward",
        "aten.nll_loss_forward", "aten.nll_loss_backward",
        "aten.nll_loss2d_forward", "aten.nll_loss2d_backward",
        "aten.mse_loss", "aten.mse_loss_backward",
        "aten.binary_cross_entropy", "aten.binary_cross_entropy_backward",
        # pooling: a window of compares or adds per output element
        "aten.max_pool2d_with_indices", "aten.max_pool2d_with_indices_backward",
        "aten.avg_pool2d", "aten.avg_pool2d_backward",
        "aten._adaptive_avg_pool2d", "aten._adaptive_avg_pool2d_backward",
        # asking about a tensor's metadata
        "aten.size", "aten.sym_size", "aten.stride", "aten.sym_stride", "aten.numel",
        "aten.dim", "aten.storage_offset", "aten.is_contiguous", "prim.device", "prim.layout",
    }
)


class FlopCountError(RuntimeError):
    """A step could not be run for counting, on meta nor on the CPU."""


@dataclass(frozen=True, slots=True)
class FlopCount:
    """FLOPs of one training step of the whole batch (multiply-add = 2).

    - `forward`: the model's forward and the loss.
    - `backward`: `loss.backward()`.
    - `per_sample_forward`: `forward / params["batch_size"]`.
    - `device_used`: "meta", or "cpu" when the step could not run on meta.
    - `uncounted`: ops the step ran that have no FLOP formula and are not known
      to be linear-cost (`LINEAR_COST_OPS`): when not empty, the counts are low.
    - `fallback_reason`: why meta failed, when `device_used` is "cpu".
    """

    forward: int
    backward: int
    per_sample_forward: float
    device_used: str
    uncounted: tuple[str, ...] = ()
    fallback_reason: str | None = None

    def __post_init__(self) -> None:
        if self.device_used not in DEVICES:
            raise ValueError(f"FlopCount.device_used must be one of {DEVICES}, got {self.device_used!r}")
        for name in ("forward", "backward", "per_sample_forward"):
            if getattr(self, name) < 0:
                raise ValueError(f"FlopCount.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def step(self) -> int:
        """Forward, loss and backward: what one training step computes, optimizer aside."""
        return self.forward + self.backward


def count_step_flops(build: Callable[[dict], Workload], params: Mapping[str, Any]) -> FlopCount:
    """Count the FLOPs of one training step of the workload `build(params)` makes.

    Builds the workload with meta as the default device and runs one forward,
    loss and backward on meta tensors. Where that fails (an op with no meta
    kernel, a data-dependent branch, a builder that insists on real tensors),
    it builds again on the CPU and runs the step for real: exact, but it costs
    one CPU step's time and memory at the trial's sizes.

    Leaves torch's global RNG state and grad mode as it found them, so the
    runner can call it before seeding and timing. Raises FlopCountError when
    the step runs on neither device.
    """
    with _global_state_preserved():
        try:
            return _count(build, params, "meta")
        except Exception as exc:  # any failure on meta is a reason to try the CPU
            reason = one_line(exc, limit=500)
        try:
            return _count(build, params, "cpu", fallback_reason=reason)
        except Exception as exc:
            raise FlopCountError(
                f"could not count FLOPs: on meta {reason}; on cpu {one_line(exc, limit=500)}"
            ) from exc


def _count(build, params, device: str, fallback_reason: str | None = None) -> FlopCount:
    with torch.device(device):  # factories without a device make meta tensors
        work = build(dict(params))
    model = work.model.to(device)  # a builder may have made some parts on the CPU
    model.train()  # as the runner does: train-mode batch norm, dropout
    inputs, targets = (to_device(x, device) for x in work.make_batch())
    recorder = _OpRecorder()
    # The recorder is entered first, so it sits under the counter: it sees the ops
    # the counter lets run, after the counter has decomposed what it could.
    with sdpa_kernel(SDPBackend.MATH), recorder:
        with FlopCounterMode(display=False) as forward:
            loss = work.loss_fn(call_model(model, inputs), targets)
        with FlopCounterMode(display=False) as backward:
            loss.backward()
    fwd = forward.get_total_flops()
    return FlopCount(
        forward=fwd,
        backward=backward.get_total_flops(),
        per_sample_forward=fwd / params["batch_size"],
        device_used=device,
        uncounted=recorder.uncounted(set(forward.flop_registry)),
        fallback_reason=fallback_reason,
    )


class _OpRecorder(TorchDispatchMode):
    """Records every aten op that runs under it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func)
        return func(*args, **(kwargs or {}))

    def uncounted(self, registry: set) -> tuple[str, ...]:
        """Names of the ops with no formula in `registry` that are not linear-cost."""
        names = set()
        for op in self.ops:
            packet = getattr(op, "overloadpacket", op)
            if packet in registry or _is_linear_cost(op):
                continue
            names.add(str(packet))
        return tuple(sorted(names))


def _is_linear_cost(op) -> bool:
    tags = getattr(op, "tags", ())
    return (
        getattr(op, "is_view", False)
        or torch.Tag.pointwise in tags
        or torch.Tag.reduction in tags
        or str(getattr(op, "overloadpacket", op)) in LINEAR_COST_OPS
    )


@contextlib.contextmanager
def _global_state_preserved() -> Iterator[None]:
    # Building a model on the CPU draws its init from the global generator;
    # fork_rng puts the state back. enable_grad: the step needs autograd even
    # when the caller is under no_grad, and restores the caller's mode on exit.
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda), torch.enable_grad():
        yield
