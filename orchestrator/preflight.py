"""What `run_sweep` checks before it hands Ray a trial, so that a sweep that cannot work
stops with one line and nothing run: the GPU types the spec names are on the cluster, a
local store is the same directory on every node, every node that runs trials can write the
store, and `isolation: reuse` is not asked of nodes with several GPUs. `ray` is passed in
(the session's); the probes run as Ray tasks pinned to each node."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Sequence

from stepscope.errors import one_line
from stepscope.orchestrator import cluster
from stepscope.orchestrator.cluster import SchedulerError
from stepscope.orchestrator.spec import Isolation, SweepSpec
from stepscope.storage.store import PROBE_DIR, STORE, Store, StoreError, probe_write
from stepscope.workloads.trial import Trial


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
            STORE, f" {store.location}: a local path, but nodes on other hosts ({', '.join(blind)}) "
            "cannot see it; use a directory mounted at the same path on every node, "
            "or an object store URI such as s3://bucket/prefix"
        )


#: How long the driver waits for every node's answer to the store probe. A node answers in
#: a second or two (a worker starts, one small write and delete); a store that cannot be
#: reached fails within seconds (`stepscope.storage.store.S3_CONNECT_TIMEOUT_S`).
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
    failures: list[tuple[cluster.Node, tuple]] = []  # node, why (the parts of a message)
    for ref in ready:
        try:
            ray.get(ref)
        except Exception as exc:  # Ray's wrapper of the StoreError the probe raised, or of a dead worker
            cause = getattr(exc, "cause", None)
            why = _without_store(cause, store) if isinstance(cause, StoreError) else (one_line(exc),)
            failures.append((refs[ref], why))
    for ref in late:
        ray.cancel(ref, force=True)
        failures.append((refs[ref], (f"no answer to the store probe within {timeout:g} s",)))
    if failures:
        node, why = failures[0]
        more = f"; {len(failures) - 1} more node(s) fail too" if len(failures) > 1 else ""
        raise SchedulerError(
            STORE, f" {store.location}: node {node.node_id[:12]} ({node.ip}): ", *why,
            f"{more}. Every node that runs trials "
            "must be able to write the store: give the nodes the credentials and endpoint the driver "
            "uses (or mount the directory there), or use a store they all reach; nothing was run"
        )


def _without_store(error: StoreError, store: Store) -> tuple:
    """The parts of the probe's StoreError without the `store LOCATION: ` it opens with:
    the message that reports it names the store once, before the node."""
    lead = f" {store.location}: "
    parts = error.args
    if len(parts) >= 2 and parts[0] == STORE and isinstance(parts[1], str) and parts[1].startswith(lead):
        return (parts[1][len(lead):], *parts[2:])
    return parts


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
