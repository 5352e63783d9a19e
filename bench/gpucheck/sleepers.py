"""A custom workload whose phases do known work, for bench/gpu_check.py's attribution checks.

Named in a trial as `workload: gpucheck.sleepers:build` (bench/ on the search path). Its
parameters, all optional, are milliseconds of work put in one place each:

| parameter      | where it runs                                   | kind of work |
| ---            | ---                                             | --- |
| `forward_ms`   | inside `model.forward`                          | device |
| `loss_ms`      | inside `loss_fn`                                | device |
| `backward_ms`  | in the backward of a custom autograd Function   | device |
| `optimizer_ms` | in `optimizer.step()` (an SGD subclass)          | device |
| `data_host_ms` | in `make_batch()`                               | host only (time.sleep) |
| `loss_host_ms` | in `loss_fn`, after its device work             | host only (time.sleep) |

Device work on CUDA is `torch.cuda._sleep(cycles)`: one kernel that spins on the SM's
`clock64()` for that many cycles, queued on the current stream like any kernel, so the
host returns at once (source: torch/cuda/__init__.py `_sleep`,
https://github.com/pytorch/pytorch/blob/main/torch/cuda/__init__.py, and its kernel in
aten/src/ATen/cuda/Sleep.cu). `cycles_per_ms` (float, from `probes.calibrate`) turns
milliseconds into cycles. On a CPU, device work is a busy loop on `perf_counter_ns`
(the CPU is the device: its work is the host thread's).

The model is one `Linear(WIDTH, WIDTH)`; batches come from a pool made at build time, so
nothing but the sleeps costs more than microseconds.
"""

from __future__ import annotations

import time
from time import perf_counter_ns

import torch

from stepscope import Workload

WIDTH = 64
POOL = 2


def device_work(ms: float, cycles_per_ms: float, device: torch.device) -> None:
    """`ms` milliseconds of work on `device`: queued (CUDA) or done (CPU)."""
    if ms <= 0:
        return
    if device.type == "cuda":
        if cycles_per_ms <= 0:
            raise ValueError("cycles_per_ms: calibrate torch.cuda._sleep first (probes.calibrate)")
        torch.cuda._sleep(int(round(ms * cycles_per_ms)))
    else:
        spin(ms)


def spin(ms: float) -> None:
    """Busy-wait `ms` milliseconds on the host's monotonic clock."""
    end = perf_counter_ns() + int(ms * 1e6)
    while perf_counter_ns() < end:
        pass


def host_sleep(ms: float) -> None:
    if ms > 0:
        time.sleep(ms / 1e3)


class _WorkInBackward(torch.autograd.Function):
    """Identity in the forward; `ms` of device work in the backward, on the backward's stream."""

    @staticmethod
    def forward(ctx, x, ms, cycles_per_ms):
        ctx.ms, ctx.cycles_per_ms = ms, cycles_per_ms
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        device_work(ctx.ms, ctx.cycles_per_ms, grad.device)
        return grad, None, None


class _Model(torch.nn.Module):
    def __init__(self, forward_ms: float, backward_ms: float, cycles_per_ms: float) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(WIDTH, WIDTH)
        self.forward_ms, self.backward_ms, self.cycles_per_ms = forward_ms, backward_ms, cycles_per_ms

    def forward(self, x):
        y = self.linear(x)
        device_work(self.forward_ms, self.cycles_per_ms, y.device)
        return _WorkInBackward.apply(y, self.backward_ms, self.cycles_per_ms)


class _WorkingSGD(torch.optim.SGD):
    """SGD whose step first does `ms` of device work on its parameters' device."""

    def __init__(self, params, ms: float, cycles_per_ms: float) -> None:
        super().__init__(params, lr=0.01)
        self.ms, self.cycles_per_ms = ms, cycles_per_ms

    def step(self, closure=None):
        device_work(self.ms, self.cycles_per_ms, self.param_groups[0]["params"][0].device)
        return super().step(closure)


def build(params: dict) -> Workload:
    ms = {k: float(params.get(k, 0.0)) for k in
          ("forward_ms", "loss_ms", "backward_ms", "optimizer_ms", "data_host_ms", "loss_host_ms")}
    cycles = float(params.get("cycles_per_ms", 0.0))
    gen = torch.Generator().manual_seed(params["seed"])
    n = params["batch_size"]
    pool = [(torch.randn(n, WIDTH, generator=gen), torch.randn(n, WIDTH, generator=gen)) for _ in range(POOL)]
    state = {"i": 0}

    def make_batch():
        host_sleep(ms["data_host_ms"])
        state["i"] += 1
        return pool[state["i"] % POOL]

    def loss_fn(out, target):
        device_work(ms["loss_ms"], cycles, out.device)
        host_sleep(ms["loss_host_ms"])
        return torch.nn.functional.mse_loss(out, target)

    return Workload(
        model=_Model(ms["forward_ms"], ms["backward_ms"], cycles),
        make_batch=make_batch,
        loss_fn=loss_fn,
        make_optimizer=lambda ps: _WorkingSGD(ps, ms["optimizer_ms"], cycles),
    )
