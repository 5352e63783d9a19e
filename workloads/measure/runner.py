"""run_trial: build a workload, run warmup then measured steps, time every phase,
write the rows. Ray-free: `stepscope trial` calls it directly, Ray workers call it
through the scheduler.

A step is exactly the phases of `stepscope.workloads.storage.schema.PHASES`:
data -> to_device -> forward -> loss -> backward -> optimizer (zero_grad included).
Whatever goes wrong becomes the trial's status (`oom` or `failed`) and error
text; the rows are written either way.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from time import perf_counter_ns
from typing import Any

from stepscope.workloads.api import Workload
from stepscope.workloads.measure import device as devices
from stepscope.workloads.measure import memory, utilization
from stepscope.workloads.measure.timing import make_timer, phase_ms
from stepscope.workloads.registry import load_builder
from stepscope.workloads.storage.schema import PHASES, SCHEMA_VERSION
from stepscope.workloads.storage.store import Store
from stepscope.workloads.trial import Trial

N_PHASES = len(PHASES)
MEMORY_COLUMNS = (
    "param_bytes", "grad_bytes", "optimizer_state_bytes", "activation_bytes", "alloc_retries",
    "cuda_context_bytes", "nvml_used_bytes", "non_torch_bytes", "nvml_memory_scope",
)
_WORKER_THREADS: int | None = None  # torch's thread count before any trial changed it


def version() -> str:
    try:
        from importlib.metadata import version as _v

        return _v("stepscope")
    except Exception:
        return "0+unknown"


@dataclass
class _Measured:
    """What the loop produced; filled in as it goes so a crash keeps what ran."""

    device_ms: list[list[float] | None] = field(default_factory=list)  # None: same as host (CPU)
    gaps_ms: list[list[float | None] | None] = field(default_factory=list)  # GPU idle before each phase
    host_ns: list[tuple[int, ...]] = field(default_factory=list)  # clock at each phase's start and end
    model_to_device_ms: float | None = None
    param_count: int | None = None
    measured_wall_s: float | None = None
    final_loss: float | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    work: dict[str, Any] = field(default_factory=dict)  # FLOPs and peaks (utilization.py)
    mem: dict[str, Any] = field(default_factory=dict)  # param/grad/optimizer/activation bytes
    phase_peaks: list[tuple] = field(default_factory=list)  # per step: (rss, allocated, reserved, retries)


def run_trial(
    trial: Trial,
    sweep_id: str,
    store: Store | None,
    *,
    search_paths: Iterable[str] = (),
    node_id: str | None = None,
    attempt: int = 1,
) -> dict[str, Any]:
    """Run one trial in this process and write its rows (when `store` is given).

    Returns the `trials` row. Never raises for a problem of the trial itself;
    a failure to write the store does raise.
    """
    started = _now()
    measured = _Measured()
    status, error = "ok", None
    try:
        _run(trial, measured, list(search_paths))
    except Exception as exc:  # the trial's own failure becomes its row
        status = "oom" if _is_oom(exc) else "failed"
        error = _describe_error(exc)
    trial_row = _trial_row(trial, sweep_id, measured, status, error, started, node_id, attempt)
    if store is not None:
        device_rows = (
            [devices.device_row(measured.facts, sweep_id=sweep_id, trial_id=trial.trial_id, node_id=node_id,
                                observed_at=started)]
            if measured.facts
            else []
        )
        store.write_trial(sweep_id, trial.trial_id, trial_row, _step_rows(trial, sweep_id, measured), device_rows)
    return trial_row


def failed_row(trial: Trial, sweep_id: str, error: str, attempt: int, status: str = "failed") -> dict[str, Any]:
    """The row for a trial that never got to write its own (its worker died)."""
    row = _trial_row(trial, sweep_id, _Measured(), status, error, _now(), None, attempt)
    row["pid"] = None  # not the worker's: this row is written by the driver
    return row


def _run(trial: Trial, out: _Measured, search_paths: list[str]) -> None:
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
    workload = builder(dict(p))
    if not isinstance(workload, Workload):
        raise TypeError(f"{p['workload']} returned {type(workload).__name__}, not a workloads.Workload")
    model = workload.model
    out.param_count = sum(t.numel() for t in model.parameters())

    if device.type == "cuda":
        # Create the CUDA context first: its start-up is not the model's transfer.
        torch.empty(1, device=device)
        torch.cuda.synchronize(device)
        used, scope = memory.nvml_used_bytes(out.facts["device_uuid"])
        if used is not None:
            out.mem["cuda_context_bytes"] = used - torch.cuda.memory_reserved(device)
    t0 = perf_counter_ns()
    model = model.to(device=device, dtype=precision.param_dtype)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the copy is complete only when the device says so
    out.model_to_device_ms = (perf_counter_ns() - t0) / 1e6
    model.train()

    params = [q for q in model.parameters() if q.requires_grad]
    if workload.make_optimizer is not None:
        optimizer = workload.make_optimizer(params)
    else:
        optimizer = make_optimizer(torch, p["optimizer"], params, p["lr"])
    _loop(torch, trial, workload, model, optimizer, device, precision, out)
    if p["count_flops"]:
        steps = len(out.device_ms) - p["warmup"]
        out.work.update(utilization.rates(torch, device, p["precision"], out.work, out.measured_wall_s, steps, out.facts))


class Precision:
    """What a precision name means for the model, the data and the step."""

    def __init__(self, torch: Any, name: str, device: Any) -> None:
        self.name = name
        # Set both ways on every trial: a reused worker must not inherit the last trial's mode.
        tf32 = name == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
        self.param_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name, torch.float32)
        amp_dtype = {"amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}.get(name)
        self.autocast = (
            (lambda: torch.autocast(device_type=device.type, dtype=amp_dtype))
            if amp_dtype is not None
            else contextlib.nullcontext
        )
        # fp16 autocast needs loss scaling to keep small gradients from flushing to zero.
        self.scaler = torch.amp.GradScaler(device.type) if name == "amp_fp16" else None


def make_optimizer(torch: Any, name: str, params: list, lr: float) -> Any:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    raise ValueError(f"optimizer: unknown {name!r}")


def _loop(torch, trial, workload, model, optimizer, device, precision, out: _Measured) -> None:
    p = trial.params
    warmup, total = p["warmup"], p["warmup"] + p["iterations"]
    peaks = memory.PhasePeaks(torch, device, N_PHASES)
    timer = make_timer(device.type, N_PHASES, torch, between=peaks.mark)  # peaks: off the device's clock
    make_batch, loss_fn, autocast, scaler = workload.make_batch, workload.loss_fn, precision.autocast, precision.scaler
    cast = precision.param_dtype if precision.param_dtype != torch.float32 else None
    # Activations are counted on the first warmup step only: the hooks cost time.
    saved = memory.SavedTensors(model) if warmup else None
    out.mem["param_bytes"] = memory.param_bytes(model)
    loss = None
    measure_start = 0
    try:
        for step in range(total):
            if step == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)  # the measured wall clock starts on an idle device
                measure_start = perf_counter_ns()
            hooks = (
                torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack)
                if step == 0 and saved is not None
                else contextlib.nullcontext()
            )
            timer.mark(0)
            inputs, targets = make_batch()
            timer.mark(1)
            inputs, targets = _to(inputs, device, cast), _to(targets, device, cast)
            timer.mark(2)
            with autocast(), hooks:
                outputs = _call(model, inputs)
                timer.mark(3)
                loss = loss_fn(outputs, targets)
            timer.mark(4)
            (scaler.scale(loss) if scaler is not None else loss).backward()
            timer.mark(5)
            if step == 0:
                out.mem["grad_bytes"] = memory.grad_bytes(model)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            timer.mark(6)
            # Drop this step's tensors now, so they do not live on into the next
            # step's phases (a GPT's logits are the largest tensor of its step).
            loss = loss.detach()
            del inputs, targets, outputs
            device_ms, gaps, host_ns = timer.read()  # on a GPU: the step's one synchronisation
            out.device_ms.append(device_ms)
            out.gaps_ms.append(gaps)
            out.host_ns.append(host_ns)
            out.phase_peaks.append(peaks.read())
    finally:
        peaks.close()
    out.measured_wall_s = (perf_counter_ns() - measure_start) / 1e9
    out.mem["optimizer_state_bytes"] = memory.optimizer_state_bytes(optimizer)
    if saved is not None:
        out.mem["activation_bytes"] = saved.total
    if device.type == "cuda":
        out.mem["alloc_retries"] = int(torch.cuda.memory_stats(device).get("num_alloc_retries", 0))
        used, scope = memory.nvml_used_bytes(out.facts["device_uuid"])
        if used is not None:
            out.mem.update(
                nvml_used_bytes=used,
                non_torch_bytes=used - torch.cuda.memory_reserved(device),
                nvml_memory_scope=scope,
            )
    if loss is not None:
        out.final_loss = float(loss.float().item())


def _to(x: Any, device: Any, cast: Any) -> Any:
    """Move a batch (a tensor, or a tuple/list/dict of them) to the device; cast
    floating-point tensors when the model itself was cast (bf16, fp16)."""
    if hasattr(x, "to"):
        if cast is not None and x.is_floating_point():
            return x.to(device=device, dtype=cast)
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device, cast) for v in x)
    if isinstance(x, dict):
        return {k: _to(v, device, cast) for k, v in x.items()}
    return x


def _call(model: Any, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    text = str(exc)
    return "out of memory" in text.lower() or "can't allocate memory" in text


def _describe_error(exc: BaseException) -> str:
    """The exception and where in the workload it came from, compactly."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}{where}"[:2000]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _trial_row(trial, sweep_id, m: _Measured, status, error, started, node_id, attempt) -> dict[str, Any]:
    p = trial.params
    measured_steps = max(0, len(m.device_ms) - p["warmup"])
    if status != "ok":
        m.measured_wall_s = None
    samples_per_s = (
        p["batch_size"] * measured_steps / m.measured_wall_s
        if m.measured_wall_s and measured_steps
        else None
    )
    facts = {
        key: m.facts.get(key)
        for key in (
            "device_kind", "device_name", "device_index", "device_uuid", "device_memory_bytes",
            "sm_count", "compute_capability", "driver_version", "cpu_count", "num_threads",
            "host", "python_version", "torch_version", "cuda_version", "cudnn_version",
        )
    }
    return {
        "sweep_id": sweep_id,
        "trial_id": trial.trial_id,
        "trial_index": trial.index,
        "repeat": trial.repeat,
        "attempt": attempt,
        "status": status,
        "error": error,
        "workload": p["workload"],
        "batch_size": p["batch_size"],
        "precision": p["precision"],
        "optimizer": p["optimizer"],
        "iterations": p["iterations"],
        "warmup": p["warmup"],
        "seed": p["seed"],
        "params": json.dumps(p, sort_keys=True),
        "config_id": trial.config_id,
        "gpu": trial.gpu,
        **facts,
        "node_id": node_id,
        "pid": os.getpid(),
        "started_at": started,
        "ended_at": _now(),
        "model_to_device_ms": m.model_to_device_ms,
        "param_count": m.param_count,
        "measured_steps": measured_steps,
        "measured_wall_s": m.measured_wall_s,
        "samples_per_s": samples_per_s,
        "final_loss": m.final_loss,
        **{key: m.work.get(key) for key in utilization.COLUMNS},
        **{key: m.mem.get(key) for key in MEMORY_COLUMNS},
        "stepscope_version": version(),
        "schema_version": SCHEMA_VERSION,
    }


def _step_rows(trial: Trial, sweep_id: str, m: _Measured) -> list[dict[str, Any]]:
    warmup = trial.params["warmup"]
    rows = []
    no_gaps = (None,) * N_PHASES
    for it, (dev, gaps, host_ns, (rss, alloc, reserved, retries)) in enumerate(
        zip(m.device_ms, m.gaps_ms, m.host_ns, m.phase_peaks, strict=True)
    ):
        host = phase_ms(host_ns)
        if dev is None:  # a CPU: wall time is device time, and there is no device to sit idle
            dev, gaps = host, no_gaps
        for i, phase in enumerate(PHASES):
            rows.append(
                {
                    "sweep_id": sweep_id,
                    "trial_id": trial.trial_id,
                    "iteration": it,
                    "is_warmup": it < warmup,
                    "phase": phase,
                    "phase_index": i,
                    "duration_ms": dev[i],
                    "host_ms": host[i],
                    "gpu_gap_ms": gaps[i],
                    "peak_rss_bytes": rss[i],
                    "peak_allocated_bytes": alloc[i],
                    "peak_reserved_bytes": reserved[i],
                    "alloc_retries": retries[i],
                }
            )
    return rows
