"""GPU types, slots and the store check, over node lists as Ray reports them."""

from __future__ import annotations

import pytest

from stepscope.orchestrator import cluster
from stepscope.orchestrator.scheduler import SchedulerError, check_store_visible, resolve_gpu_types
from stepscope.orchestrator.spec import parse_spec
from stepscope.storage.store import Store


def ray_node(node_id, ip="10.0.0.1", cpus=8, gpus=0, **custom):
    res = {"CPU": float(cpus), "memory": 1e10, f"node:{ip}": 1.0, **custom}
    if gpus:
        res["GPU"] = float(gpus)
    return {"NodeID": node_id, "Alive": True, "NodeManagerAddress": ip, "Resources": res}


class FakeRayNodes:
    def __init__(self, nodes):
        self._nodes = nodes

    def nodes(self):
        return self._nodes


def nid(tag: str) -> str:
    """A node id as Ray writes them: 56 hex digits."""
    return tag.encode().hex().ljust(56, "0")


NODES = cluster.alive_nodes(
    FakeRayNodes(
        [
            ray_node(nid("head"), cpus=4),
            ray_node(nid("a"), ip="10.0.0.2", gpus=8, **{"accelerator_type:H100": 1, "gpu_model:H100-SXM-80GB": 8}),
            ray_node(nid("b"), ip="10.0.0.3", gpus=2, **{"accelerator_type:H100": 1, "gpu_model:H100-PCIe-80GB": 2}),
            ray_node(nid("c"), ip="10.0.0.4", gpus=4, **{"accelerator_type:A100": 1}),
            {**ray_node(nid("dead"), gpus=8, **{"accelerator_type:L4": 1}), "Alive": False},
        ]
    )
)


def test_inventory_reads_types_and_skips_dead_nodes():
    assert [n.node_id for n in NODES] == [nid("head"), nid("a"), nid("b"), nid("c")]
    assert cluster.types_present(NODES) == ["A100", "H100", "H100-PCIe-80GB", "H100-SXM-80GB"]
    assert cluster.each_types(NODES) == ["A100", "H100-PCIe-80GB", "H100-SXM-80GB"]


def test_resources_and_slots_per_type():
    assert cluster.resources_for("H100-SXM-80GB", NODES) == {"gpu_model:H100-SXM-80GB": 0.001}
    assert cluster.resources_for("H100", NODES) == {"accelerator_type:H100": 0.001}
    assert cluster.gpu_slots("H100", NODES) == 10  # SXM and PCIe alike: Ray's coarse type
    assert cluster.gpu_slots("H100-PCIe-80GB", NODES) == 2
    assert cluster.gpu_slots(None, NODES) == 14
    assert cluster.cpu_slots(8, NODES) == 3 and cluster.cpu_slots(4, NODES) == 7


@pytest.mark.parametrize(
    ("gpus", "want"),
    [("any", None), ("each", ["A100", "H100-PCIe-80GB", "H100-SXM-80GB"]), ("[H100, A100]", ["H100", "A100"])],
)
def test_resolve_gpu_types(gpus, want):
    spec = parse_spec(f"name: x\ngrid: {{workload: [mlp]}}\ngpus: {gpus}\n")
    assert resolve_gpu_types(spec, NODES) == want


def test_unknown_gpu_type_names_what_the_cluster_has():
    spec = parse_spec("name: x\ngrid: {workload: [mlp]}\ngpus: [V100, A100]\n")
    with pytest.raises(SchedulerError, match=r"no node of the cluster has V100; GPU types present: A100, H100, H100-PCIe-80GB, H100-SXM-80GB"):
        resolve_gpu_types(spec, NODES)
    each = parse_spec("name: x\ngrid: {workload: [mlp]}\ngpus: each\n")
    with pytest.raises(SchedulerError, match="no GPU node"):
        resolve_gpu_types(each, NODES[:1])


class FakeProbeRay:
    """The slice of Ray that check_store_visible uses; `blind` nodes cannot see the path."""

    def __init__(self, blind: set[str]):
        self.blind, self.asked = blind, []

    def remote(self, **options):
        ray = self

        class Fn:
            def __init__(self, fn):
                self.fn = fn

            def options(self, scheduling_strategy):
                node = scheduling_strategy.node_id

                class Bound:
                    def remote(_self, path):
                        ray.asked.append(node)
                        return False if node in ray.blind else self.fn(path)

                return Bound()

        return Fn

    def get(self, ref, timeout=None):
        return ref


def test_local_store_must_be_visible_from_other_hosts(tmp_path):
    store = Store(str(tmp_path / "results"))
    ray = FakeProbeRay(blind={nid("c")})
    with pytest.raises(SchedulerError) as err:
        check_store_visible(ray, store, NODES, driver_ip="10.0.0.1")
    assert "nodes on other hosts (10.0.0.4) cannot see it" in str(err.value)
    assert "s3://bucket/prefix" in str(err.value)
    assert sorted(ray.asked) == sorted([nid("a"), nid("b"), nid("c")])  # not the head: it shares the driver's host
    assert not [p for p in (tmp_path / "results").iterdir()], "the probe file is removed"


def test_shared_mount_and_same_host_pass(tmp_path):
    ray = FakeProbeRay(blind=set())
    check_store_visible(ray, Store(str(tmp_path / "r")), NODES, driver_ip="10.0.0.1")
    same_host = FakeProbeRay(blind={nid("a")})
    check_store_visible(same_host, Store(str(tmp_path / "r")), NODES[:1], driver_ip="10.0.0.1")
    assert same_host.asked == []
    uri = FakeProbeRay(blind={nid("a")})
    check_store_visible(uri, Store("s3://bucket/prefix"), NODES, driver_ip="10.0.0.1")
    assert uri.asked == []
