"""run_trial: build a workload, run warmup then measured steps, time every phase,
write the rows. Ray-free: `stepscope trial` calls it directly, Ray workers call it
through the scheduler.

A step is exactly the phases of `stepscope.storage.schema.PHASES`:
data -> to_device -> forward -> loss -> backward -> optimizer (zero_grad included).
Whatever goes wrong becomes the trial's status (`oom` or `failed`) and error
text; a loss that became NaN or ±Inf in a loop that ran to the end makes it
`nonfinite` (`trials.nonfinite_step` says where). The rows are written either way.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Iterable
from dataclasses import replace
from time import perf_counter_ns
from typing import Any

from stepscope.errors import one_line
from stepscope.storage.schema import PHASES, TrialStatus
from stepscope.storage.store import Store
from stepscope.workloads.api import Workload
from stepscope.workloads.measure import device as devices
from stepscope.workloads.measure import memory, rows, utilization
from stepscope.workloads.measure.batch import call_model, to_device
from stepscope.workloads.measure.measurers import (
    BACKWARD,
    DATA,
    END,
    FORWARD,
    LOSS,
    OPTIMIZER,
    TO_DEVICE,
    DeviceSampler,
    LossWatch,
    Measurers,
    PhaseMemory,
    SavedForBackward,
)
from stepscope.workloads.measure.precision import Precision
from stepscope.workloads.measure.records import Measured
from stepscope.workloads.measure.timing import make_timer
from stepscope.workloads.params import COMMON_BY_NAME
from stepscope.workloads.registry import is_custom, load_builder
from stepscope.workloads.trial import Trial

N_PHASES = len(PHASES)
_WORKER_THREADS: int | None = None  # torch's thread count before any trial changed it


def run_trial(
    trial: Trial,
    sweep_id: str,
    store: Store | None,
    *,
    search_paths: Iterable[str] = (),
    node_id: str | None = None,
    gpu_model: str | None = None,
    attempt: int = 1,
) -> dict[str, Any]:
    """Run one trial in this process and write its rows (when `store` is given).

    `node_id` and `gpu_model` say where Ray ran it: the node, and the node's GPU model
    (`stepscope.orchestrator.cluster.Node.gpu_type`), stored whatever the spec asked for.

    Returns the `trials` row. Never raises for a problem of the trial itself;
    a failure to write the store does raise.
    """
    started = rows.now()
    measured = Measured()
    status, error = TrialStatus.OK, None
    try:
        _run(trial, measured, list(search_paths))
    # The trial's own failure becomes its row, whatever it raised: sys.exit() (SystemExit),
    # GeneratorExit and other BaseExceptions included. KeyboardInterrupt alone still stops the
    # process: Ctrl-C belongs to the user.
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        status = TrialStatus.OOM if _is_oom(exc) else TrialStatus.FAILED
        error = _describe_error(exc)
    if status is TrialStatus.OK and measured.nonfinite is not None:
        status, error = TrialStatus.NONFINITE, measured.nonfinite.describe(trial.params["warmup"])
    trial_row = rows.trial_row(trial, sweep_id, measured, status, error, started, node_id, attempt, pid=os.getpid(),
                               gpu_model=gpu_model)
    if store is not None:
        device_rows = (
            [rows.device_row(measured.facts, sweep_id=sweep_id, trial_id=trial.trial_id, node_id=node_id,
                             observed_at=started)]
            if measured.facts
            else []
        )
        store.write_trial(sweep_id, trial.trial_id, trial_row, rows.step_rows(trial, sweep_id, measured), device_rows)
    return trial_row


def failed_row(trial: Trial, sweep_id: str, error: str, attempt: int,
               status: TrialStatus = TrialStatus.FAILED) -> dict[str, Any]:
    """The row for a trial that never got to write its own (its worker died, it timed
    out). `pid` is null: the driver writes this row, not the trial's process."""
    return rows.trial_row(trial, sweep_id, Measured(), status, error, rows.now(), None, attempt)


def _run(trial: Trial, out: Measured, search_paths: list[str]) -> None:
    import torch

    p = trial.params
    global _WORKER_THREADS
    if _WORKER_THREADS is None:
        _WORKER_THREADS = torch.get_num_threads()  # what this worker was given
    # Set on every trial: a reused worker must not keep the last trial's count.
    torch.set_num_threads(p["num_threads"] or _WORKER_THREADS)
    torch.manual_seed(p["seed"])  # also seeds every CUDA device
    device = devices.pick_device(torch, p["device"])
    out.facts = devices.describe(torch, device)
    precision = Precision(torch, p["precision"], device)

    builder = load_builder(p["workload"], search_paths)
    if p["count_flops"]:
        # Untimed, before anything is built or seeded for the trial (it leaves the RNG alone).
        out.work = utilization.count(builder, p)
    given = ReadTracker(p)
    workload = builder(given)
    if not isinstance(workload, Workload):
        raise TypeError(f"{p['workload']} returned {type(workload).__name__}, not a stepscope.Workload")
    model = workload.model
    out.param_count = sum(t.numel() for t in model.parameters())

    if device.type == "cuda":
        # Create the CUDA context first: its start-up is not the model's transfer.
        torch.empty(1, device=device)
        torch.cuda.synchronize(device)
        used, scope = memory.nvml_used_bytes(out.facts.device_uuid)
        if used is not None:
            out.mem = replace(out.mem, cuda_context_bytes=_not_negative(used - torch.cuda.memory_reserved(device)))
    t0 = perf_counter_ns()
    model = model.to(device=device, dtype=precision.param_dtype)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the copy is complete only when the device says so
    out.model_to_device_ms = (perf_counter_ns() - t0) / 1e6
    model.train()

    params = [q for q in model.parameters() if q.requires_grad]
    precision.apply(torch)  # again: the builder may have set TF32 flags; the trial's precision wins
    if workload.make_optimizer is not None:
        optimizer = workload.make_optimizer(params)
    else:
        optimizer = make_optimizer(torch, p["optimizer"], params, p["lr"], p.get("eps"))
    _loop(torch, trial, workload, model, optimizer, device, precision, out)
    if is_custom(p["workload"]):
        # After the loop: a closure of the workload's may read a parameter only when it runs.
        out.unused_params = ",".join(given.unread(set(p) - set(COMMON_BY_NAME))) or None
    if p["count_flops"]:
        steps = len(out.device_ms) - p["warmup"]
        out.work = utilization.rates(torch, device, p["precision"], out.work, out.measured_wall_s, steps, out.facts)


class ReadTracker(dict):
    """The parameters a builder gets: a dict that remembers which keys were read, so that a
    spec key the workload never reads (a typo, `seq_lne` for `seq_len`) can be named.
    Any access that hands out every key (iteration, `**params`, `.items()`) counts as
    reading them all."""

    def __init__(self, params: dict) -> None:
        super().__init__(params)
        self.read: set = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key) -> bool:
        self.read.add(key)
        return super().__contains__(key)

    def pop(self, key, *default):
        self.read.add(key)
        return super().pop(key, *default)

    def setdefault(self, key, default=None):
        self.read.add(key)
        return super().setdefault(key, default)

    def _all(self) -> None:
        self.read.update(super().keys())

    def __iter__(self):
        self._all()
        return super().__iter__()

    def keys(self):
        self._all()
        return super().keys()

    def items(self):
        self._all()
        return super().items()

    def values(self):
        self._all()
        return super().values()

    def copy(self) -> dict:
        self._all()
        return dict(super().items())

    def unread(self, keys: set) -> list:
        """Of `keys`, those never read, sorted."""
        return sorted(k for k in keys if k not in self.read)


def make_optimizer(torch: Any, name: str, params: list, lr: float, eps: float | None = None) -> Any:
    """The optimizer a spec names (`sgd` with momentum 0.9, `adam`, `adamw`) over `params`.

    `eps` (Adam/AdamW; SGD has none): None keeps torch's default, 1e-8. The resolved
    parameters carry one for pure fp16 (`stepscope.workloads.params.resolve_eps`), where
    1e-8 rounds to 0. Raises ValueError for an unknown name.
    """
    extra = {} if eps is None else {"eps": eps}
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, **extra)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, **extra)
    raise ValueError(f"optimizer: unknown {name!r}")


def _loop(torch, trial, workload, model, optimizer, device, precision, out: Measured) -> None:
    """Warmup then measured steps, each phase between two marks of the timer, named by the
    phase that starts there (`measurers.DATA` ... `END`); the per-step measurers beside it."""
    p = trial.params
    warmup, total = p["warmup"], p["warmup"] + p["iterations"]
    cuda = device.type == "cuda"
    out.mem = replace(out.mem, param_bytes=memory.param_bytes(model))
    measurers = Measurers(  # in this order: the sampler stops before the others read the device
        PhaseMemory(torch, device, out),
        DeviceSampler(out.facts.device_uuid if cuda else None, warmup, out),
        LossWatch(torch, device, total, out),
        SavedForBackward(torch, model, out),
    )
    timer = make_timer(device.type, N_PHASES, torch, between=measurers.boundary)  # off the device's clock
    make_batch, loss_fn, autocast, scaler = workload.make_batch, workload.loss_fn, precision.autocast, precision.scaler
    cast = precision.param_dtype if precision.param_dtype != torch.float32 else None
    loss, measure_start, completed = None, 0, False
    try:
        for step in range(total):
            measurers.start_step(step)
            if step == warmup:
                if cuda:
                    torch.cuda.synchronize(device)  # the measured wall clock starts on an idle device
                measure_start = perf_counter_ns()
            forward_context = measurers.forward_context(step)
            timer.mark(DATA)
            inputs, targets = make_batch()
            timer.mark(TO_DEVICE)
            inputs, targets = to_device(inputs, device, cast), to_device(targets, device, cast)
            timer.mark(FORWARD)
            with autocast(), forward_context:
                outputs = call_model(model, inputs)
                timer.mark(LOSS)
                loss = loss_fn(outputs, targets)
            timer.mark(BACKWARD)
            (scaler.scale(loss) if scaler is not None else loss).backward()
            timer.mark(OPTIMIZER)
            if step == 0:
                out.mem = replace(out.mem, grad_bytes=memory.grad_bytes(model))
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            timer.mark(END)
            # Drop this step's tensors now, so they do not live on into the next
            # step's phases (a GPT's logits are the largest tensor of its step).
            loss = loss.detach()
            measurers.end_step(step, loss)
            del inputs, targets, outputs
            # The host's readings now; on a GPU the device's for the steps whose events have
            # completed, without waiting for them (the host runs ahead, as a plain loop does).
            host_ns, done = timer.end_step()
            _keep_step(out, host_ns, done)
        if cuda:
            # The measured wall clock ends when the device has finished the last step.
            torch.cuda.synchronize(device)
        out.measured_wall_s = (perf_counter_ns() - measure_start) / 1e9
        _keep_device_times(out, timer.drain())  # complete by now: no wait
        completed = True
    except BaseException:
        # Keep the steps whose device times can still be read; a device in an error state
        # may not answer: then only the steps already read are kept.
        with contextlib.suppress(Exception):
            _keep_device_times(out, timer.drain())
        _keep_whole_steps(out, timer.device_timed)
        raise
    finally:
        measurers.finish(completed)
    _after_loop(torch, device, optimizer, loss, out)


def _after_loop(torch, device, optimizer, loss, out: Measured) -> None:
    """The trial's memory and final loss, read once the measured steps are over."""
    out.mem = replace(out.mem, optimizer_state_bytes=memory.optimizer_state_bytes(optimizer))
    if device.type == "cuda":
        out.mem = replace(out.mem, alloc_retries=int(torch.cuda.memory_stats(device).get("num_alloc_retries", 0)))
        used, scope = memory.nvml_used_bytes(out.facts.device_uuid)
        if used is not None:
            out.mem = replace(out.mem, nvml_used_bytes=used, non_torch_bytes=_not_negative(
                used - torch.cuda.memory_reserved(device)), nvml_memory_scope=scope)
    if loss is not None:
        out.final_loss = float(loss.float().item())


def _keep_step(out: Measured, host_ns: tuple[int, ...], done: list) -> None:
    """Append a step's host readings; fill in the device readings that became available."""
    out.host_ns.append(host_ns)
    out.device_ms.append(None)  # on a GPU, filled in once its events have completed
    out.gaps_ms.append(None)
    _keep_device_times(out, done)


def _keep_device_times(out: Measured, done: list) -> None:
    for step, device_ms, gaps in done:
        out.device_ms[step], out.gaps_ms[step] = device_ms, gaps
        out.device_read = step + 1


def _keep_whole_steps(out: Measured, device_timed: bool) -> None:
    """After a failure: keep only the steps with every reading in. On a GPU, those whose
    device times were read (a step without them has no device time to store; host time is
    no stand-in for it); everywhere, none that a measurer kept but the timer did not."""
    n = out.device_read if device_timed else len(out.host_ns)
    del out.device_ms[n:], out.gaps_ms[n:], out.host_ns[n:], out.phase_memory_peaks[n:]


def _not_negative(value: int) -> int | None:
    """A difference of two readings taken apart (NVML's and torch's) that came out below
    zero is no measurement of anything: None."""
    return value if value >= 0 else None


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    text = one_line(exc, with_type=False)  # never raises, even for a __str__ that does
    return "out of memory" in text.lower() or "can't allocate memory" in text


def _describe_error(exc: BaseException) -> str:
    """The exception and where in the workload it came from, compactly."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    text = one_line(exc, limit=2000 - len(where)) + where
    # Parquet strings are UTF-8: a message holding lone surrogates (bytes decoded with
    # surrogateescape, a C library's text) is kept readable instead of failing the write.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
