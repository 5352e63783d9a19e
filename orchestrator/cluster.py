"""What a Ray cluster has: nodes, their GPU types, and how a trial asks for one.

A GPU node is known by two names:

- its coarse type, Ray's own `accelerator_type:<T>` resource (autodetected on a
  real GPU: `H100`, `A100`, `L4`...). Ray gives H100 PCIe and H100 SXM the same one;
- optionally a precise model label, a custom resource `gpu_model:<LABEL>` that
  the node advertises (e.g. `ray start --resources '{"gpu_model:H100-SXM-80GB": 8}'`,
  value = its GPUs). A spec's `gpus:` may name either.

`gpus: each` means every type present when the sweep starts, one per GPU node:
its precise label when it has one, else its coarse type.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from stepscope.errors import Field, StepscopeError

ACCEL_PREFIX = "accelerator_type:"
MODEL_PREFIX = "gpu_model:"
_TINY = 0.001  # a fractional request: selects the node type without using up the label


#: The cluster's address as the library names it (`Session(address)`, `jobs.client(address)`).
ADDRESS = Field("address")


class SchedulerError(StepscopeError, RuntimeError):
    """The sweep cannot start (cluster unreachable, GPU types or storage missing)."""


@dataclass(frozen=True, slots=True)
class Node:
    node_id: str
    ip: str
    cpus: float
    gpus: float
    accelerator_types: tuple[str, ...]
    gpu_models: tuple[str, ...]

    @property
    def gpu_type(self) -> str | None:
        """The name `gpus: each` uses for this node: precise label first."""
        if not self.gpus:
            return None
        if self.gpu_models:
            return self.gpu_models[0]
        return self.accelerator_types[0] if self.accelerator_types else None

    def has_type(self, name: str) -> bool:
        return name in self.gpu_models or name in self.accelerator_types


def alive_nodes(ray) -> list[Node]:
    nodes = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = n.get("Resources", {})
        nodes.append(
            Node(
                node_id=n["NodeID"],
                ip=n.get("NodeManagerAddress", ""),
                cpus=float(res.get("CPU", 0)),
                gpus=float(res.get("GPU", 0)),
                accelerator_types=tuple(sorted(k.removeprefix(ACCEL_PREFIX) for k in res if k.startswith(ACCEL_PREFIX))),
                gpu_models=tuple(sorted(k.removeprefix(MODEL_PREFIX) for k in res if k.startswith(MODEL_PREFIX))),
            )
        )
    return nodes


def types_present(nodes: Iterable[Node]) -> list[str]:
    """Every name a spec may target on this cluster: coarse types and precise labels."""
    names = set()
    for n in nodes:
        if n.gpus:
            names.update(n.accelerator_types)
            names.update(n.gpu_models)
    return sorted(names)


def each_types(nodes: Iterable[Node]) -> list[str]:
    return sorted({n.gpu_type for n in nodes if n.gpu_type})


def resources_for(gpu_type: str, nodes: Sequence[Node]) -> dict[str, float]:
    """The custom resource that pins a trial to nodes of `gpu_type`."""
    if any(gpu_type in n.gpu_models for n in nodes):
        return {MODEL_PREFIX + gpu_type: _TINY}
    return {ACCEL_PREFIX + gpu_type: _TINY}


def gpu_slots(gpu_type: str | None, nodes: Sequence[Node]) -> int:
    """How many trials of this type can run at once: one per GPU of that type."""
    return int(sum(n.gpus for n in nodes if gpu_type is None or n.has_type(gpu_type)))


def cpu_slots(cpus_per_trial: float, nodes: Sequence[Node]) -> int:
    return sum(int(n.cpus // cpus_per_trial) for n in nodes if cpus_per_trial and n.cpus >= cpus_per_trial)


def describe_types(nodes: Sequence[Node]) -> str:
    counts: dict[str, int] = {}
    for n in nodes:
        if n.gpu_type:
            counts[n.gpu_type] = counts.get(n.gpu_type, 0) + int(n.gpus)
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())) or "no GPUs"
