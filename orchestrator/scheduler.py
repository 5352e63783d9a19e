"""Trials -> Ray tasks: resources, isolation, retries, resume, interrupts.

The only module that imports Ray. One Ray task per trial:

- `isolation: process` (default) gives each trial a fresh worker process
  (`max_calls=1`), so CUDA memory, allocator caches and cuDNN autotuning never
  leak from one trial into the next. `reuse` keeps workers (fast, for quick grids).
- One trial per GPU at a time (`num_gpus=1`). On a cluster without GPUs a trial
  takes all the CPUs of a node: timings of trials that share cores mean nothing.
- A trial's own failure is caught in the worker and stored as a row. A worker
  process or node that dies is retried by the driver (so it knows the attempt
  number), then recorded as `failed`.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from orchestrator.spec import SweepSpec
from workloads.api import Trial
from workloads.runner import run_trial, version
from workloads.schema import RESULT_STATUSES, SCHEMA_VERSION
from workloads.store import Store

MAX_RETRIES = 2  # resubmissions after a worker or node died


class SchedulerError(RuntimeError):
    """The sweep cannot start (cluster unreachable, resources missing)."""


@dataclass(frozen=True, slots=True)
class TrialOutcome:
    trial: Trial
    status: str
    error: str | None
    samples_per_s: float | None
    seconds: float
    attempt: int


@dataclass
class SweepOutcome:
    sweep_id: str
    total: int
    skipped: int = 0  # already stored, --resume
    outcomes: list[TrialOutcome] = field(default_factory=list)
    interrupted: bool = False

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def all_results(self) -> bool:
        return all(o.status in RESULT_STATUSES for o in self.outcomes) and not self.interrupted


class Progress:
    """What the scheduler reports while it runs; the CLI prints it."""

    def started(self, sweep_id: str, total: int, skipped: int, cluster: str) -> None: ...

    def trial_done(self, outcome: TrialOutcome, done: int, total: int, running: int) -> None: ...

    def retrying(self, trial: Trial, attempt: int, reason: str) -> None: ...


def new_sweep_id(spec: SweepSpec) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{spec.name}-{stamp}-{os.urandom(2).hex()}"


def sweep_row(spec: SweepSpec, sweep_id: str, n_trials: int, address: str | None) -> dict:
    return {
        "sweep_id": sweep_id,
        "name": spec.name,
        "spec": spec.text,
        "spec_hash": spec.spec_hash,
        "spec_path": None if spec.directory is None else os.path.abspath(spec.source),
        "created_at": dt.datetime.now(dt.timezone.utc),
        "trial_count": n_trials,
        "isolation": spec.isolation,
        "ray_address": address,
        "host": socket.gethostname(),
        "stepscope_version": version(),
        "schema_version": SCHEMA_VERSION,
    }


def search_paths(spec: SweepSpec) -> list[str]:
    """Where a custom workload module may sit: beside the spec, then the current directory."""
    paths = [spec.directory, os.getcwd()]
    return [p for p in paths if p]


def run_sweep(
    spec: SweepSpec,
    trials: Sequence[Trial],
    store: Store,
    *,
    sweep_id: str,
    done_ids: frozenset[str] = frozenset(),
    address: str | None = None,
    progress: Progress | None = None,
    new_sweep: bool = True,
) -> SweepOutcome:
    """Run every trial not in `done_ids` on Ray and write its rows to `store`."""
    progress = progress or Progress()
    todo = [t for t in trials if t.trial_id not in done_ids]
    outcome = SweepOutcome(sweep_id=sweep_id, total=len(trials), skipped=len(trials) - len(todo))
    if new_sweep:
        store.write_sweep(sweep_row(spec, sweep_id, len(trials), address))
    if not todo:
        progress.started(sweep_id, len(trials), outcome.skipped, "nothing to run")
        return outcome

    import ray

    with _StopOnSignal() as stop:
        started_here = _connect(ray, address)
        try:
            options = _task_options(ray, spec)
            progress.started(sweep_id, len(trials), outcome.skipped, _describe_cluster(ray, address, options))
            _Driver(ray, spec, store, sweep_id, options, progress, outcome, stop).run(todo)
        finally:
            if started_here:
                ray.shutdown()
    return outcome


class _StopOnSignal:
    """Ctrl-C (or SIGTERM) sets a flag that the driver's loop checks between waits.

    A KeyboardInterrupt raised inside Ray's C++ calls can leave the core worker
    half torn down (it segfaults at exit), so the first signal only asks the
    loop to stop: it cancels what is running and returns. A second one raises.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.previous: dict = {}

    def is_set(self) -> bool:
        return self.event.is_set()

    def _handle(self, signum, frame) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _connect(ray, address: str | None) -> bool:
    """Connect to ADDR, or RAY_ADDRESS, or start an embedded local cluster. True if started here."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    try:
        if address is None:
            ray.init(include_dashboard=False, **quiet)
        else:
            ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a local cluster"
        raise SchedulerError(f"--address: cannot connect to Ray at {where}: {exc}") from None
    return True


def _task_options(ray, spec: SweepSpec) -> dict:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    gpus = sum(n["Resources"].get("GPU", 0) for n in nodes)
    opts: dict = {"max_retries": 0, "retry_exceptions": False}
    if spec.gpus is not None or gpus > 0:
        opts.update(num_gpus=1, num_cpus=1)
    else:
        cpus = [int(n["Resources"].get("CPU", 0)) for n in nodes if n["Resources"].get("CPU", 0) >= 1]
        if not cpus:
            raise SchedulerError("the Ray cluster has no node with a CPU to run trials on")
        opts["num_cpus"] = min(cpus)  # the whole of the smallest node: trials never share cores
    if spec.gpus is not None:
        have = sorted(
            k.removeprefix("accelerator_type:")
            for n in nodes
            for k in n["Resources"]
            if k.startswith("accelerator_type:")
        )
        missing = [g for g in spec.gpus if g not in have]
        if missing:
            listed = ", ".join(sorted(set(have))) or "none"
            raise SchedulerError(
                f"gpus: no node of the cluster has {', '.join(missing)}; types present: {listed}"
            )
    return opts


def _describe_cluster(ray, address: str | None, options: dict) -> str:
    res = ray.cluster_resources()
    where = address or os.environ.get("RAY_ADDRESS") or "embedded local Ray"
    per = f"{options.get('num_gpus', 0)} GPU" if options.get("num_gpus") else f"{options['num_cpus']} CPUs"
    return f"{where}: {int(res.get('CPU', 0))} CPUs, {int(res.get('GPU', 0))} GPUs; {per} per trial"


def _remote_trial(trial: Trial, sweep_id: str, store: Store, paths: list[str], attempt: int) -> dict:
    """Runs in a Ray worker."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    row = run_trial(trial, sweep_id, store, search_paths=paths, node_id=node_id, attempt=attempt)
    return {"status": row["status"], "error": row["error"], "samples_per_s": row["samples_per_s"]}


class _Driver:
    def __init__(self, ray, spec, store, sweep_id, options, progress, outcome, stop) -> None:
        self.stop = stop
        self.ray, self.spec, self.store, self.sweep_id = ray, spec, store, sweep_id
        self.progress, self.outcome = progress, outcome
        # max_calls=1: the worker process exits after one trial, so nothing leaks into the next.
        max_calls = 1 if spec.isolation == "process" else 0
        self.task = ray.remote(max_calls=max_calls)(_remote_trial)
        self.options = options
        self.paths = search_paths(spec)
        self.pending: dict = {}  # ObjectRef -> (trial, attempt, submitted_at)

    def submit(self, trial: Trial, attempt: int) -> None:
        ref = self.task.options(**self.options, name=f"stepscope {trial.label}").remote(
            trial, self.sweep_id, self.store, self.paths, attempt
        )
        self.pending[ref] = (trial, attempt, time.monotonic())

    def run(self, todo: Sequence[Trial]) -> None:
        for trial in todo:
            if self.stop.is_set():
                break
            self.submit(trial, 1)
        # Short waits, so a Ctrl-C is acted on within a fraction of a second.
        while self.pending and not self.stop.is_set():
            ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=0.2)
            for ref in ready:
                self.collect(ref)
        if self.stop.is_set():
            self.outcome.interrupted = True
            for ref in self.pending:
                # force=True kills the worker: its trial writes nothing (files appear whole or not at all).
                self.ray.cancel(ref, force=True)
            self.pending.clear()

    def collect(self, ref) -> None:
        trial, attempt, t0 = self.pending.pop(ref)
        try:
            res = self.ray.get(ref)
            status, error, sps = res["status"], res["error"], res["samples_per_s"]
        except (self.ray.exceptions.WorkerCrashedError, self.ray.exceptions.NodeDiedError,
                self.ray.exceptions.ObjectLostError) as exc:
            reason = f"{type(exc).__name__}: worker process died"
            if attempt <= MAX_RETRIES:
                self.progress.retrying(trial, attempt + 1, reason)
                self.submit(trial, attempt + 1)
                return
            status, error, sps = "failed", f"{reason} ({attempt} attempts)", None
            self._record_failure(trial, error, attempt)
        except self.ray.exceptions.RayError as exc:
            status, error, sps = "failed", _first_line(exc), None
            self._record_failure(trial, error, attempt)
        done = TrialOutcome(trial, status, error, sps, time.monotonic() - t0, attempt)
        self.outcome.outcomes.append(done)
        n_done = self.outcome.skipped + len(self.outcome.outcomes)
        self.progress.trial_done(done, n_done, self.outcome.total, len(self.pending))

    def _record_failure(self, trial: Trial, error: str, attempt: int) -> None:
        """A trial whose worker never wrote a row still gets one, from the driver."""
        from workloads.runner import failed_row

        self.store.write_trial(self.sweep_id, trial.trial_id, failed_row(trial, self.sweep_id, error, attempt), [])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else text}"[:2000]
