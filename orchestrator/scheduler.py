"""Trials -> Ray tasks: resources, isolation, retries, timeouts, resume, interrupts.

Ray is imported here (with the two modules this one re-exports: `ray_session`, the
connection, and `preflight`, the checks before a trial is handed out) and, for `stepscope
submit`, in `stepscope.orchestrator.jobs` (the layer contract in pyproject.toml holds it).
One Ray task per trial:

- `isolation: process` (default) runs each trial in a fresh OS process that never
  ran another trial, so CUDA memory, allocator caches, cuDNN autotuning and torch's
  global state never leak from one trial into the next. Workers are kept; each forks
  the trial's process from a server that has imported torch once
  (`stepscope.orchestrator.forkserver`), so a trial pays milliseconds, not a process start.
  A trial's process that dies counts as a dead worker. `reuse` runs trials in the
  worker itself (faster still, for quick grids).
- One trial per GPU at a time (`num_gpus=1`), pinned to a GPU type with a
  fractional custom resource (see `stepscope.orchestrator.cluster`). On a cluster without
  GPUs a trial takes all the CPUs of a node: trials that share cores time nothing.
- The driver hands Ray only as many trials of a type as there are GPUs (or CPU
  nodes) for them. So a handed-out trial is a running trial: `--trial-timeout`
  counts from its start (worker start-up included), progress knows what runs
  where, and Ctrl-C has little to cancel.
- A trial's own failure is caught in the worker and stored as a row. A worker
  or node that dies is retried by the driver (so it knows the attempt number),
  then stored as `failed`. A GPU type whose last node is gone fails its trials
  rather than leaving them pending forever.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from stepscope.errors import one_line
from stepscope.orchestrator import cluster, forkserver
from stepscope.orchestrator.cluster import SchedulerError  # noqa: F401 (re-exported)
from stepscope.orchestrator.preflight import (  # noqa: F401 (re-exported)
    PROBE_TIMEOUT_S,
    check_isolation,
    check_store_visible,
    check_store_writable,
    plan_trials,
    resolve_gpu_types,
    trial_nodes,
)
from stepscope.orchestrator.ray_session import Session, use_token_if_present  # noqa: F401 (re-exported)
from stepscope.orchestrator.spec import Isolation, SweepSpec, search_paths  # noqa: F401 (re-exported)
from stepscope.storage.schema import SCHEMA_VERSION, TrialStatus, version
from stepscope.storage.store import Store
from stepscope.workloads.measure.runner import failed_row, run_trial
from stepscope.workloads.registry import BUILTINS
from stepscope.workloads.trial import Trial

MAX_RETRIES = 2  # resubmissions after a worker, a trial's process or a node died
#: What the fork server of `isolation: process` imports once, for every trial's process.
#: torch._dynamo (with sympy) is imported lazily by torch on a trial's first optimizer step
#: or FLOP count: a second per trial if the server did not.
PRELOAD = ("torch", "torch._dynamo", "stepscope.workloads.measure.runner", *(w.module for w in BUILTINS.values()))
NODE_REFRESH_S = 5.0  # how often the driver re-reads which nodes are alive


@dataclass(frozen=True, slots=True)
class TrialOutcome:
    trial: Trial
    status: TrialStatus
    error: str | None
    samples_per_s: float | None
    seconds: float
    attempt: int
    unused_params: str | None = None  # a custom workload's spec keys it never read (trials.unused_params)


@dataclass
class SweepOutcome:
    sweep_id: str
    total: int
    skipped: int = 0  # already stored, --resume
    outcomes: list[TrialOutcome] = field(default_factory=list)
    interrupted: bool = False

    def count(self, status: TrialStatus | str, gpu: str | None | bool = False) -> int:
        return sum(o.status == status and (gpu is False or o.trial.gpu == gpu) for o in self.outcomes)

    @property
    def all_results(self) -> bool:
        return all(o.status.is_result for o in self.outcomes) and not self.interrupted


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Where a sweep stands, for progress displays."""

    done: int
    total: int
    running: dict[str, int]  # GPU type (or "cpu"/"any") -> trials running
    failures: int
    elapsed_s: float
    eta_s: float | None


class Progress:
    """What the scheduler reports while it runs; the CLI prints it."""

    def started(self, sweep_id: str, total: int, skipped: int, cluster: str) -> None: ...

    def trial_done(self, outcome: TrialOutcome, snap: Snapshot) -> None: ...

    def tick(self, snap: Snapshot) -> None: ...

    def retrying(self, trial: Trial, attempt: int, reason: str) -> None: ...

    def finished(self) -> None: ...


def sweep_row(spec: SweepSpec, sweep_id: str, n_trials: int, address: str | None) -> dict:
    return {
        "sweep_id": sweep_id,
        "name": spec.name,
        "spec": spec.text,
        "spec_hash": spec.spec_hash,
        "spec_path": spec.abs_path,
        "created_at": dt.datetime.now(dt.timezone.utc),
        "trial_count": n_trials,
        "isolation": spec.isolation.value,
        "ray_address": address,
        "host": socket.gethostname(),
        "stepscope_version": version(),
        "schema_version": SCHEMA_VERSION,
    }


def run_sweep(
    session: Session,
    spec: SweepSpec,
    trials: Sequence[Trial],
    store: Store,
    *,
    sweep_id: str,
    done_ids: frozenset[str] = frozenset(),
    progress: Progress | None = None,
    new_sweep: bool = True,
    trial_timeout: float | None = None,
    paths: Sequence[str] = (),
) -> SweepOutcome:
    """Run every trial not in `done_ids` on the session's cluster and write its rows.

    `paths`: where workers look for custom workload modules, resolved before Ray
    was started (in a Ray job, the driver's working directory is replaced under it).
    """
    progress = progress or Progress()
    ray = session.ray
    todo = [t for t in trials if t.trial_id not in done_ids]
    outcome = SweepOutcome(sweep_id=sweep_id, total=len(trials), skipped=len(trials) - len(todo))
    nodes = session.nodes()
    resolve_gpu_types(spec, nodes)  # the types may have gone since the trials were planned
    check_isolation(spec, nodes)
    driver_ip = ray.util.get_node_ip_address()
    check_store_visible(ray, store, nodes, driver_ip)
    if todo:
        check_store_writable(ray, store, trial_nodes(spec, nodes), driver_ip)
    if new_sweep:
        store.write_sweep(sweep_row(spec, sweep_id, len(trials), session.address))
    if not todo:
        progress.started(sweep_id, len(trials), outcome.skipped, "nothing to run")
        return outcome
    driver = _Driver(ray, spec, store, sweep_id, progress, outcome, trial_timeout, list(paths))
    progress.started(sweep_id, len(trials), outcome.skipped, driver.describe(session.address, nodes))
    with _StopOnSignal() as stop:
        driver.run(todo, stop)
    progress.finished()
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


def _remote_trial(trial: Trial, sweep_id: str, store: Store, paths: list[str], attempt: int, fresh: bool) -> dict:
    """Runs in a Ray worker; with `fresh`, the trial runs in a new process forked for it."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    node = next((n for n in cluster.alive_nodes(ray) if n.node_id == node_id), None)
    args = (trial, sweep_id, store)
    kwargs = {"search_paths": paths, "node_id": node_id, "attempt": attempt,
              "gpu_model": node.gpu_type if node is not None else None}
    if fresh:
        row = forkserver.call_in_fresh_process(PRELOAD, run_trial, *args, **kwargs)
    else:
        row = run_trial(*args, **kwargs)
    return {"status": row["status"], "error": row["error"], "samples_per_s": row["samples_per_s"],
            "unused_params": row["unused_params"]}


@dataclass
class _Running:
    trial: Trial
    attempt: int
    started: float
    ended_by: str | None = None  # "timeout" or "lost": the driver cancelled it and says why


class _Driver:
    def __init__(self, ray, spec, store, sweep_id, progress, outcome, trial_timeout, paths) -> None:
        self.ray, self.spec, self.store, self.sweep_id = ray, spec, store, sweep_id
        self.progress, self.outcome, self.trial_timeout = progress, outcome, trial_timeout
        # Workers are kept either way; with `process` they never run a trial themselves.
        self.task = ray.remote(max_calls=0)(_remote_trial)
        self.fresh = spec.isolation is Isolation.PROCESS
        self.paths = paths
        self.queues: dict[str | None, deque] = {}  # GPU type -> (trial, attempt) waiting
        self.running: dict = {}  # ObjectRef -> _Running
        self.nodes: list[cluster.Node] = []
        self.nodes_read = 0.0
        self.t0 = time.monotonic()
        self.use_gpus = False
        self.cpus_per_trial = 1.0

    # ---- resources

    def refresh_nodes(self, force: bool = False) -> None:
        if force or time.monotonic() - self.nodes_read > NODE_REFRESH_S:
            self.nodes = cluster.alive_nodes(self.ray)
            self.nodes_read = time.monotonic()

    def describe(self, address: str | None, nodes: Sequence[cluster.Node]) -> str:
        self.nodes, self.nodes_read = list(nodes), time.monotonic()
        self.use_gpus = self.spec.targets.wants_gpus or any(n.gpus for n in nodes)
        if self.use_gpus:
            # A GPU trial gets its share of its node's CPUs (for the data phase, launches).
            shares = [n.cpus // n.gpus for n in nodes if n.gpus]
            self.cpus_per_trial = max(1.0, min(shares)) if shares else 1.0
        else:
            cpus = [n.cpus for n in nodes if n.cpus >= 1]
            if not cpus:
                raise SchedulerError("the Ray cluster has no node with a CPU to run trials on")
            self.cpus_per_trial = min(cpus)  # the whole of the smallest node
        where = address or os.environ.get("RAY_ADDRESS") or (
            f"embedded local Ray at {self.ray.get_runtime_context().gcs_address}")
        cpus = int(sum(n.cpus for n in nodes))
        cpus_each = f"{int(self.cpus_per_trial)} CPU{'s' if self.cpus_per_trial != 1 else ''}"
        per = f"1 GPU and {cpus_each}" if self.use_gpus else cpus_each
        return f"{where}: {len(nodes)} node{'s' if len(nodes) != 1 else ''}, {cpus} CPUs, {cluster.describe_types(nodes)}; {per} per trial"

    def options(self, trial: Trial) -> dict:
        opts: dict = {"max_retries": 0, "retry_exceptions": False, "name": f"stepscope {trial.label}"}
        if self.use_gpus:
            opts.update(num_gpus=1, num_cpus=self.cpus_per_trial)
            if trial.gpu is not None:
                opts["resources"] = cluster.resources_for(trial.gpu, self.nodes)
        else:
            opts["num_cpus"] = self.cpus_per_trial
        return opts

    def slots(self, gpu: str | None) -> int:
        if self.use_gpus:
            return cluster.gpu_slots(gpu, self.nodes)
        return cluster.cpu_slots(self.cpus_per_trial, self.nodes)

    # ---- the loop

    def run(self, todo: Sequence[Trial], stop: _StopOnSignal) -> None:
        for trial in todo:
            self.queues.setdefault(trial.gpu, deque()).append((trial, 1))
        while (self.running or any(self.queues.values())) and not stop.is_set():
            self.refresh_nodes()
            self.submit_ready()
            if not self.running:
                if any(self.queues.values()):
                    time.sleep(0.2)  # every type's nodes are gone or busy; fail_orphans handled the gone
                continue
            ready, rest = self.ray.wait(list(self.running), num_returns=1, timeout=0.2)
            if rest:  # whatever else finished meanwhile, without waiting for it
                ready += self.ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            for ref in ready:
                self.collect(ref)
            self.enforce_timeout()
            self.fail_lost_types()
            self.progress.tick(self.snapshot())
        if stop.is_set():
            self.outcome.interrupted = True
            for ref in self.running:
                # force=True kills the worker: its trial writes nothing (files appear whole or not at all).
                self.ray.cancel(ref, force=True)
            self.running.clear()

    def submit_ready(self) -> None:
        busy: dict = {}
        for r in self.running.values():
            busy[r.trial.gpu] = busy.get(r.trial.gpu, 0) + 1
        for gpu, queue in self.queues.items():
            free = self.slots(gpu) - busy.get(gpu, 0)
            if free <= 0 and not busy.get(gpu) and queue:
                self.fail_orphans(gpu, queue)
                continue
            while queue and free > 0:
                trial, attempt = queue.popleft()
                ref = self.task.options(**self.options(trial)).remote(trial, self.sweep_id, self.store, self.paths, attempt, self.fresh)
                self.running[ref] = _Running(trial, attempt, time.monotonic())
                free -= 1

    def fail_orphans(self, gpu: str | None, queue: deque) -> None:
        """No alive node can take this type any more (they died): fail its trials now."""
        self.refresh_nodes(force=True)
        if self.slots(gpu) > 0:
            return
        what = f"GPU type {gpu}" if gpu else ("a GPU" if self.use_gpus else f"{int(self.cpus_per_trial)} CPUs")
        while queue:
            trial, attempt = queue.popleft()
            self.finish(trial, attempt, TrialStatus.FAILED, f"no alive node has {what} any more", None, 0.0, write=True)

    def collect(self, ref) -> None:
        run = self.running.pop(ref)
        took = time.monotonic() - run.started
        try:
            res = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            self.failed_attempt(run, exc, took)
            return
        # A result, even for a trial the driver had just cancelled: it finished first.
        self.finish(run.trial, run.attempt, res["status"], res["error"], res["samples_per_s"], took, write=False,
                    unused_params=res.get("unused_params"))

    def failed_attempt(self, run: _Running, exc: Exception, took: float) -> None:
        trial, attempt, errors = run.trial, run.attempt, self.ray.exceptions
        if run.ended_by:  # the driver cancelled it (timeout, lost GPU type); Ray confirms it did not finish
            status, error = self.ended_reason(run)
            self.finish(trial, attempt, status, error, None, took, write=True)
            return
        died = (errors.WorkerCrashedError, errors.NodeDiedError, errors.ObjectLostError,
                errors.LocalRayletDiedError, errors.OwnerDiedError, errors.RaySystemError)
        oom = isinstance(exc, errors.OutOfMemoryError)
        child = getattr(exc, "cause", exc)  # Ray wraps what a task raised in a RayTaskError
        child_died = isinstance(child, forkserver.ChildDied)
        if not (oom or child_died or isinstance(exc, died)):
            self.finish(trial, attempt, TrialStatus.FAILED, one_line(exc), None, took, write=True)
            return
        # Ray's memory monitor may have killed this worker for a neighbour's sake: retry that too.
        # A trial's own process that died (isolation: process) is handled like a dead worker.
        if child_died:
            reason = f"{type(child).__name__}: {child}"
        else:
            what = "Ray killed the worker for host memory" if oom else "the worker process or its node died"
            reason = f"{type(exc).__name__}: {what}"
        if attempt <= MAX_RETRIES:
            self.progress.retrying(trial, attempt + 1, reason)
            self.queues.setdefault(trial.gpu, deque()).appendleft((trial, attempt + 1))
            self.refresh_nodes(force=True)
            return
        status = TrialStatus.OOM if oom else TrialStatus.FAILED
        self.finish(trial, attempt, status, f"{reason} ({attempt} attempts)", None, took, write=True)

    def ended_reason(self, run: _Running) -> tuple[TrialStatus, str]:
        if run.ended_by == "timeout":
            return TrialStatus.TIMEOUT, f"timed out after {self.trial_timeout:g}s (--trial-timeout)"
        return TrialStatus.FAILED, f"no alive node has GPU type {run.trial.gpu} any more"

    def cancel(self, ref, run: _Running, why: str) -> None:
        """Kill the trial's worker (nothing partial is written); its row is written when
        Ray confirms the cancellation (collect), unless the trial finished first."""
        run.ended_by = why
        self.ray.cancel(ref, force=True)

    def enforce_timeout(self) -> None:
        if not self.trial_timeout:
            return
        now = time.monotonic()
        for ref, run in list(self.running.items()):
            if run.ended_by is None and now - run.started > self.trial_timeout:
                self.cancel(ref, run, "timeout")

    def fail_lost_types(self) -> None:
        """A trial handed to Ray for a type whose last node has died would wait forever."""
        if not self.use_gpus:
            return
        for ref, run in list(self.running.items()):
            if run.ended_by is None and self.slots(run.trial.gpu) == 0:
                self.refresh_nodes(force=True)
                if self.slots(run.trial.gpu) == 0:
                    self.cancel(ref, run, "lost")

    def finish(self, trial, attempt, status, error, sps, took, *, write: bool, unused_params: str | None = None) -> None:
        if write:  # the worker never wrote a row: the driver does
            row = failed_row(trial, self.sweep_id, error, attempt, status=status)
            self.store.write_trial(self.sweep_id, trial.trial_id, row, [])
        done = TrialOutcome(trial, TrialStatus(status), error, sps, took, attempt, unused_params)
        self.outcome.outcomes.append(done)
        self.progress.trial_done(done, self.snapshot())

    def snapshot(self) -> Snapshot:
        running: dict[str, int] = {}
        for r in self.running.values():
            key = r.trial.gpu or ("any GPU" if self.use_gpus else "cpu")
            running[key] = running.get(key, 0) + 1
        done = self.outcome.skipped + len(self.outcome.outcomes)
        elapsed = time.monotonic() - self.t0
        failures = sum(not o.status.is_result for o in self.outcome.outcomes)
        return Snapshot(done, self.outcome.total, running, failures, elapsed, self.eta())

    def eta(self) -> float | None:
        """Seconds until the sweep is done, per GPU type (types run side by side, so the
        slowest decides): the trials left of the type, at the mean duration of its finished
        trials (of any type while none of its own has finished), over the slots it has; a
        running trial counts for what its mean leaves of it. None before any trial finished."""
        finished = [o for o in self.outcome.outcomes if o.seconds > 0]
        if not finished:
            return None
        overall = sum(o.seconds for o in finished) / len(finished)
        now, eta = time.monotonic(), 0.0
        for gpu in set(self.queues) | {r.trial.gpu for r in self.running.values()}:
            own = [o.seconds for o in finished if o.trial.gpu == gpu]
            mean = sum(own) / len(own) if own else overall
            left = len(self.queues.get(gpu, ())) * mean
            left += sum(max(0.0, mean - (now - r.started)) for r in self.running.values() if r.trial.gpu == gpu)
            eta = max(eta, left / max(1, self.slots(gpu)))
        return eta
