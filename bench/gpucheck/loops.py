"""The runner against plain PyTorch loops, in one forked child per model.

Three sides, each building the workload afresh from the same seed, `warmup` steps
then `iterations` timed ones, the time kept being the measured loop's wall time over
its steps, with a device sync just before and just after the loop (the runner's
`measured_wall_s / measured_steps` is defined the same way):

- `plain`: a hand-written loop, no sync inside (the host runs ahead of the GPU);
- `plain_sync`: the same with `torch.cuda.synchronize()` after every step;
- `runner`: `stepscope.workloads.measure.runner.run_trial`, nothing written.

Rounds rotate the order (round r starts at side r mod 3), so no side always runs
first on a cold allocator or last on a warm one; the median over rounds is kept.
"""

from __future__ import annotations

import gc
import statistics
from time import perf_counter_ns

SIDES = ("runner", "plain", "plain_sync")


def compare(trial, rounds: int) -> dict[str, list[float]]:
    """Milliseconds per step of each side, one value per round. Raises if the runner's
    trial did not end `ok`."""
    from stepscope.workloads.measure.runner import run_trial

    out: dict[str, list[float]] = {side: [] for side in SIDES}
    for r in range(rounds):
        order = SIDES[r % 3:] + SIDES[: r % 3]
        for side in order:
            gc.collect()  # one side's garbage is not the next side's cost
            if side == "runner":
                row = run_trial(trial, "gpu-check-loops", None)
                if row["status"] != "ok":
                    raise RuntimeError(f"runner: {row['status']}: {row['error']}")
                out[side].append(row["measured_wall_s"] * 1e3 / row["measured_steps"])
            else:
                out[side].append(plain_step_ms(trial.params, sync_each_step=side == "plain_sync"))
    return out


def plain_step_ms(p: dict, *, sync_each_step: bool) -> float:
    """A training loop as a user writes it, over the workload the runner would build."""
    import torch

    from stepscope.workloads.registry import load_builder

    if p["num_threads"]:
        torch.set_num_threads(p["num_threads"])
    torch.manual_seed(p["seed"])
    workload = load_builder(p["workload"])(dict(p))
    cuda = p["device"] != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    tf32 = p["precision"] == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(p["precision"], torch.float32)
    if p["precision"].startswith("amp_"):
        raise ValueError("plain loops: amp precisions are not written here; use fp32, tf32, bf16 or fp16")
    model = workload.model.to(device=device, dtype=dtype)
    model.train()
    params = [q for q in model.parameters() if q.requires_grad]
    opt = {"sgd": lambda: torch.optim.SGD(params, lr=p["lr"], momentum=0.9),
           "adam": lambda: torch.optim.Adam(params, lr=p["lr"]),
           "adamw": lambda: torch.optim.AdamW(params, lr=p["lr"])}[p["optimizer"]]()
    make_batch, loss_fn = workload.make_batch, workload.loss_fn

    def move(t):
        return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def step() -> None:
        x, y = make_batch()
        loss = loss_fn(model(move(x)), move(y))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(p["warmup"]):
        step()
    sync()  # the clock starts on an idle device, as the runner's does
    t0 = perf_counter_ns()
    for _ in range(p["iterations"]):
        step()
        if sync_each_step:
            sync()
    sync()  # ... and stops when the device is done
    return (perf_counter_ns() - t0) / 1e6 / p["iterations"]


def medians(result: dict[str, list[float]]) -> dict[str, float]:
    return {side: statistics.median(values) for side, values in result.items()}
