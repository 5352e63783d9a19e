"""Trials -> Ray tasks: resources, isolation, retries, timeouts, resume, interrupts.

Ray is imported here and, for `stepscope submit`, in `stepscope.orchestrator.jobs`
(the layer contract in pyproject.toml holds it). One Ray task per trial:

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

import contextlib
import datetime as dt
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from stepscope.errors import StepscopeError, one_line
from stepscope.orchestrator import cluster, forkserver
from stepscope.orchestrator.spec import Isolation, SweepSpec, search_paths  # noqa: F401 (re-exported)
from stepscope.workloads.measure.runner import failed_row, run_trial
from stepscope.workloads.registry import BUILTINS
from stepscope.workloads.storage.schema import SCHEMA_VERSION, TrialStatus, version
from stepscope.workloads.storage.store import PROBE_DIR, Store, StoreError, probe_write
from stepscope.workloads.trial import Trial

MAX_RETRIES = 2  # resubmissions after a worker, a trial's process or a node died
#: What the fork server of `isolation: process` imports once, for every trial's process.
#: torch._dynamo (with sympy) is imported lazily by torch on a trial's first optimizer step
#: or FLOP count: a second per trial if the server did not.
PRELOAD = ("torch", "torch._dynamo", "stepscope.workloads.measure.runner", *(w.module for w in BUILTINS.values()))
NODE_REFRESH_S = 5.0  # how often the driver re-reads which nodes are alive


class SchedulerError(StepscopeError, RuntimeError):
    """The sweep cannot start (cluster unreachable, GPU types or storage missing)."""


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


#: Ray's logger for its token-authentication setup (ray/_private/authentication/).
_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


class _DropTokenAuthEnabledNotice(logging.Filter):
    """Ray 2.60 logs, whenever a new local cluster turns token authentication on by default,
    that it did so. For stepscope's own embedded cluster (on this machine, gone with the
    sweep) that is one line of noise on every run. Only that notice is dropped: the warning
    that authentication is *disabled* still prints."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


@contextlib.contextmanager
def _without_token_auth_notice():
    logger, notice = logging.getLogger(_AUTH_LOGGER), _DropTokenAuthEnabledNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


#: Ray Client's proxy starts a server per client; on a loaded head that start can miss the
#: proxy's deadline ("Initialization failure from server") and succeed on the next try.
CLIENT_INIT_TRIES, CLIENT_INIT_PAUSE_S = 3, 2.0


def _init_with_retries(ray, address: str, options: dict) -> None:
    for attempt in range(1, CLIENT_INIT_TRIES + 1):
        try:
            ray.init(address=address, **options)
            return
        except ConnectionError as exc:
            retry = address.startswith("ray://") and "Initialization failure from server" in str(exc)
            if not retry or attempt == CLIENT_INIT_TRIES:
                raise
            time.sleep(CLIENT_INIT_PAUSE_S)


class Session:
    """A connection to Ray for one sweep: an embedded cluster or an existing one."""

    def __init__(self, address: str | None) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        # Before Ray is imported: it reads its authentication settings early.
        self.token = use_token_if_present(self.address)
        import ray

        self.ray = ray
        self.started_here = False

    def __enter__(self) -> Session:
        ray = self.ray
        if ray.is_initialized():
            return self
        quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
        try:
            if self.address is None:
                # "local": always a new cluster of our own. ray.init() with no address would
                # join the cluster last recorded by `ray start` on this machine, even a dead
                # one (it then hangs for minutes), or silently run on someone else's.
                with _without_token_auth_notice():
                    ray.init(address="local", include_dashboard=False, **quiet)
            else:
                _init_with_retries(ray, self.address, quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.address or "a local cluster"
            hint = "" if self.token else (
                "; if the cluster uses token authentication, set RAY_AUTH_MODE=token and give its token "
                "(RAY_AUTH_TOKEN, or the file ~/.ray/auth_token)"
            )
            raise SchedulerError(f"--address: cannot connect to Ray at {where}: {one_line(exc)}{hint}") from None
        self.started_here = True
        return self

    def __exit__(self, *exc) -> None:
        if self.started_here:
            self.ray.shutdown()

    def nodes(self) -> list[cluster.Node]:
        return cluster.alive_nodes(self.ray)


def use_token_if_present(address: str | None) -> bool:
    """Ray turns token authentication on by itself only for an embedded cluster or
    `auto`; for an explicit address a driver must ask for it. When the user has a
    token (the way Ray looks for one) and has not chosen a mode, use it: a token
    driver also connects to a cluster without authentication. True if in token mode."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode:
        return mode == "token"
    if address is None:
        return False
    has_token = (
        os.environ.get("RAY_AUTH_TOKEN")
        or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or os.path.exists(os.path.expanduser("~/.ray/auth_token"))
    )
    if has_token:
        os.environ["RAY_AUTH_MODE"] = "token"
    return bool(has_token)


def resolve_gpu_types(spec: SweepSpec, nodes: Sequence[cluster.Node]) -> list[str] | None:
    """The GPU types this sweep targets on this cluster; None for `any`.
    A type that no node has is an error now (Ray would leave its trials pending forever)."""
    if spec.gpus_each:
        types = cluster.each_types(nodes)
        if not types:
            raise SchedulerError("gpus: each: the cluster has no GPU node; use `gpus: any` for CPU nodes")
        return types
    if spec.gpus is None:
        return None
    have = cluster.types_present(nodes)
    missing = [g for g in spec.gpus if g not in have]
    if missing:
        listed = ", ".join(have) or "none"
        raise SchedulerError(f"gpus: no node of the cluster has {', '.join(missing)}; GPU types present: {listed}")
    return list(spec.gpus)


def check_store_visible(ray, store: Store, nodes: Sequence[cluster.Node], driver_ip: str) -> None:
    """A local-path store works only if every node sees the same directory.

    Nodes on the driver's host do; for others (a shared mount, or not) we ask
    each node whether it sees a probe file the driver just wrote.
    """
    root = store.local_root
    remote = [n for n in nodes if n.ip != driver_ip]
    if root is None or not remote:
        return
    os.makedirs(root, exist_ok=True)
    probe = os.path.join(root, f".stepscope-probe-{uuid.uuid4().hex}")
    with open(probe, "w") as f:
        f.write("probe")
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        check = ray.remote(num_cpus=0)(os.path.exists)
        refs = {
            n.ip: check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)).remote(probe)
            for n in remote
        }
        blind = sorted(ip for ip, ref in refs.items() if not _probe_answer(ray, ref))
    finally:
        os.unlink(probe)
    if blind:
        raise SchedulerError(
            f"--store {store.location}: a local path, but nodes on other hosts ({', '.join(blind)}) "
            "cannot see it; use a directory mounted at the same path on every node, "
            "or an object store URI such as s3://bucket/prefix"
        )


#: How long the driver waits for every node's answer to the store probe. A node answers in
#: a second or two (a worker starts, one small write and delete); a store that cannot be
#: reached fails within seconds (`stepscope.workloads.storage.store.S3_CONNECT_TIMEOUT_S`).
PROBE_TIMEOUT_S = 60.0


def check_store_writable(ray, store: Store, nodes: Sequence[cluster.Node], driver_ip: str,
                         timeout: float = PROBE_TIMEOUT_S) -> None:
    """Each of `nodes` (those that may run a trial) must be able to write the store, or
    its trials run to the end and lose their rows at the write (a node without the
    credentials or the endpoint the driver has). So each node writes and deletes a probe
    object (`store.probe_write`) from a task pinned to it, before anything is submitted.

    A local-path store is the driver's own directory for nodes on its host (the driver
    writes there itself); other hosts are probed (after `check_store_visible`).
    """
    remote_only = store.local_root is not None
    targets = [n for n in nodes if not (remote_only and n.ip == driver_ip)]
    if not targets:
        return
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # The store's own function, not one of this module: a worker unpickles it without torch.
    probe = ray.remote(num_cpus=0, max_retries=0)(probe_write)
    token = uuid.uuid4().hex[:12]
    refs = {
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)).remote(
            store, f"{n.node_id[:12]}-{token}"
        ): n
        for n in targets
    }
    ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
    if remote_only:  # the probes' folder on a shared mount; a probe still running keeps it
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(store.local_root, PROBE_DIR))
    failures: list[tuple[cluster.Node, str]] = []  # node, why
    for ref in ready:
        try:
            ray.get(ref)
        except Exception as exc:  # Ray's wrapper of the StoreError the probe raised, or of a dead worker
            cause = getattr(exc, "cause", None)
            failures.append((refs[ref], str(cause) if isinstance(cause, StoreError) else one_line(exc)))
    for ref in late:
        ray.cancel(ref, force=True)
        failures.append((refs[ref], f"no answer to the store probe within {timeout:g} s"))
    if failures:
        node, error = failures[0]
        more = f"; {len(failures) - 1} more node(s) fail too" if len(failures) > 1 else ""
        raise SchedulerError(
            f"--store {store.location}: node {node.node_id[:12]} ({node.ip}): "
            f"{error.removeprefix(f'--store {store.location}: ')}{more}. Every node that runs trials "
            "must be able to write the store: give the nodes the credentials and endpoint the driver "
            "uses (or mount the directory there), or use a store they all reach; nothing was run"
        )


def trial_nodes(spec: SweepSpec, nodes: Sequence[cluster.Node]) -> list[cluster.Node]:
    """The nodes a trial may run on: those with a GPU when the sweep uses GPUs (as
    `_Driver.describe` decides), else those with a CPU."""
    if spec.targets.wants_gpus or any(n.gpus for n in nodes):
        return [n for n in nodes if n.gpus]
    return [n for n in nodes if n.cpus >= 1]


def check_isolation(spec: SweepSpec, nodes: Sequence[cluster.Node]) -> None:
    """A reused worker keeps the GPU it first initialised CUDA on (CUDA reads
    CUDA_VISIBLE_DEVICES once), so on a node with several GPUs its next trial
    could land on a GPU that Ray has given to another trial."""
    if spec.isolation is Isolation.REUSE and (spec.targets.wants_gpus or any(n.gpus for n in nodes)):
        many = sorted({n.ip for n in nodes if n.gpus > 1})
        if many:
            raise SchedulerError(
                f"isolation: reuse cannot keep trials on their own GPU on nodes with several GPUs "
                f"({', '.join(many)}); use `isolation: process`"
            )


def _probe_answer(ray, ref) -> bool:
    try:
        return bool(ray.get(ref, timeout=120))
    except Exception:  # a node that cannot answer cannot be trusted with the path either
        return False


def plan_trials(spec: SweepSpec, nodes: Sequence[cluster.Node]) -> tuple[list[Trial], list[str] | None]:
    from stepscope.orchestrator.grid import expand

    types = resolve_gpu_types(spec, nodes)
    return expand(spec, types if spec.gpus_each else None), types


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
