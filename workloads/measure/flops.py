"""FLOPs of one training step, counted in a separate pass that is never timed.

Counting runs every aten op of a step through a dispatch mode
(`torch.utils.flop_counter.FlopCounterMode`), which costs Python work per op:
it must never share a loop with the timer. On the meta device it costs neither
memory nor arithmetic either, since shapes are all a FLOP formula needs, so even
a model too big for this host can be counted here.

The conventions are FlopCounterMode's, which are also those of MFU as usually
reported (PaLM, Chowdhery et al. 2022, appendix B, https://arxiv.org/abs/2204.02311 ;
nanoGPT's `estimate_mfu`, https://github.com/karpathy/nanoGPT/blob/master/model.py):

- a multiply-add is 2 FLOPs;
- only matmul-class ops are counted: mm, addmm, bmm, baddbmm, convolution and
  its backward, the fused attention kernels. Elementwise ops, normalisation,
  softmax, pooling and the loss cost a few FLOPs per element and are left out;
- attention runs under the MATH SDPA backend, where it is two bmm's the counter
  sees, whatever kernel the timed step picks (the CPU's fused kernel has no
  formula). Both count the full T x T score matrix, even with `is_causal=True`:
  a causal kernel that skips the masked half does about half that work;
- the optimizer step is not counted.

Model FLOPs and hardware FLOPs (PaLM appendix B): with activation checkpointing
the backward pass re-runs parts of the forward to rebuild the activations it did
not keep. Model FLOPs leave that recomputation out: they are what the model needs,
whatever the implementation, and MFU divides them by the step time and the peak.
Hardware FLOPs include it: what the device ran, the numerator of HFU. So
`FlopCount.backward` is the backward proper and the recomputed forward is
`FlopCount.recompute`. The two are told apart by grad mode: autograd runs the
backward proper with grad mode equal to `create_graph` (off, for `loss.backward()`),
while `torch.utils.checkpoint`, reentrant or not, re-runs the forward with grad
on, since it must record a graph to differentiate (and so does any checkpointing
built on it, such as `transformers`' `gradient_checkpointing_enable()`).

A compiled model (`torch.compile(model)`, `model.compile()`, compiled submodules
or functions) is counted as the eager model it compiles, the same math: the pass
runs under `torch.compiler.set_stance("force_eager")`, where dynamo does not look
at a frame, so it neither compiles nor marks code to skip. Without that (dynamo
skips, for good, a frame it meets under a dispatch mode such as the counter),
every later step of the user's model would run eager. On a torch without
`set_stance` (before 2.6), a model holding a compiled module is not counted.

A built-in may declare a closed-form count to check this one against
(`BuiltinInfo.analytic_flops`; gpt's is in `stepscope.workloads.builtin.gpt`).
"""

from __future__ import annotations

import contextlib
import warnings
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

# torch.compiler.set_stance came with torch 2.6 (https://pytorch.org/docs/stable/generated/torch.compiler.set_stance.html).
_HAS_STANCE = hasattr(torch.compiler, "set_stance")

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
    - `backward`: `loss.backward()`, the backward proper: without `recompute`.
    - `recompute`: the forward ops `loss.backward()` re-ran for activation
      checkpointing (grad mode on); 0 without checkpointing.
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
    recompute: int = 0

    def __post_init__(self) -> None:
        if self.device_used not in DEVICES:
            raise ValueError(f"FlopCount.device_used must be one of {DEVICES}, got {self.device_used!r}")
        for name in ("forward", "backward", "recompute", "per_sample_forward"):
            if getattr(self, name) < 0:
                raise ValueError(f"FlopCount.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def step(self) -> int:
        """Model FLOPs: forward, loss and backward, no recomputation, optimizer aside.
        MFU's numerator (PaLM appendix B)."""
        return self.forward + self.backward

    @property
    def hardware(self) -> int:
        """Hardware FLOPs: `step` plus the recomputed forward, what the device ran.
        HFU's numerator (PaLM appendix B)."""
        return self.forward + self.backward + self.recompute


def count_step_flops(build: Callable[[dict], Workload], params: Mapping[str, Any]) -> FlopCount:
    """Count the FLOPs of one training step of the workload `build(params)` makes.

    Builds the workload with meta as the default device and runs one forward,
    loss and backward on meta tensors. Where that fails (an op with no meta
    kernel, a data-dependent branch, a builder that insists on real tensors),
    it builds again on the CPU and runs the step for real: exact, but it costs
    one CPU step's time and memory at the trial's sizes.

    Leaves torch's global RNG state, grad mode and dynamo as it found them, so
    the runner can call it before seeding and timing: a compiled model is counted
    eager, and its compiled code is neither made nor marked to skip (module
    docstring). Raises FlopCountError when the step runs on neither device.
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
    if not _HAS_STANCE:
        _refuse_compiled(model)
    inputs, targets = (to_device(x, device) for x in work.make_batch())
    recorder = _OpRecorder()
    # The recorder is entered first, so it sits under the counters: it sees the ops
    # they let run, after they have decomposed what they could.
    with sdpa_kernel(SDPBackend.MATH), recorder, warnings.catch_warnings():
        # FlopCounterMode's global module hooks make torch warn that a compiled module's
        # hooks fire twice; here the model runs eager (force_eager) and the counts are whole.
        warnings.filterwarnings("ignore", message=r"Using `torch\.compile\(module\)` when there are global hooks")
        with FlopCounterMode(display=False) as forward:
            loss = work.loss_fn(call_model(model, inputs), targets)
        with _counter(grad_mode=False) as backward, _counter(grad_mode=True) as recompute:
            loss.backward()
    fwd = forward.get_total_flops()
    return FlopCount(
        forward=fwd,
        backward=backward.get_total_flops(),
        recompute=recompute.get_total_flops(),
        per_sample_forward=fwd / params["batch_size"],
        device_used=device,
        uncounted=recorder.uncounted(set(forward.flop_registry)),
        fallback_reason=fallback_reason,
    )


def _counter(grad_mode: bool) -> FlopCounterMode:
    """A FlopCounterMode that counts only the ops run while `torch.is_grad_enabled()`
    is `grad_mode`: during `loss.backward()`, False is the backward proper, True the
    forward that activation checkpointing recomputes (module docstring)."""

    def gate(formula: Callable) -> Callable:
        def counted(*args, out_val=None, **kwargs):
            # A dispatch mode runs below autograd, which leaves grad mode as the op saw it.
            if torch.is_grad_enabled() is not grad_mode:
                return 0
            return formula(*args, out_val=out_val, **kwargs)

        counted._get_raw = True  # `formula` is the registry's, already shape-wrapped
        return counted

    registry = FlopCounterMode(display=False).flop_registry
    return FlopCounterMode(display=False, custom_mapping={op: gate(f) for op, f in registry.items()})


def _refuse_compiled(model) -> None:
    # Before torch 2.6 dynamo cannot be told to stand aside, and would mark the user's
    # compiled code to skip for good when it met it under the counter.
    compiled = [name or "the model" for name, m in model.named_modules()
                if isinstance(m, _optimized_module()) or getattr(m, "_compiled_call_impl", None) is not None]
    if compiled:
        raise RuntimeError(
            f"{compiled[0]} is torch.compile'd: counting it needs torch >= 2.6 (torch.compiler.set_stance); "
            "set count_flops: false, or upgrade torch"
        )


def _optimized_module() -> type:
    from torch._dynamo.eval_frame import OptimizedModule

    return OptimizedModule


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
    # force_eager: dynamo stands aside (module docstring) and the caller's stance
    # comes back on exit.
    # set_stance sets the stance when called, so it is called inside the `with`.
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with (torch.random.fork_rng(devices=cuda), torch.enable_grad(),
          torch.compiler.set_stance("force_eager") if _HAS_STANCE else contextlib.nullcontext()):
        yield
