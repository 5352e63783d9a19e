"""deploy/: the cluster-launcher config, the KubeRay manifests, the image recipe, the local script.

Fast and offline: nothing here starts a cluster or builds an image. The cluster-launcher config
goes through Ray's own validator (the steps `ray up` runs before it talks to AWS), the RayCluster
through Ray's own KubeRay parser (what the in-cluster autoscaler derives from the manifest).
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SCRIPT = DEPLOY / "local-cluster.sh"
GPU_KEY = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


# ---------------------------------------------------------------- helpers


def load_yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def cluster_config() -> dict:
    return yaml.safe_load((DEPLOY / "cluster.yaml").read_text())


def dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def dockerfile_image() -> str:
    """The image name and tag the Dockerfile says it is built as (`# image: NAME:TAG`)."""
    m = re.search(r"^# image: (\S+)$", dockerfile(), re.M)
    assert m, "deploy/Dockerfile must name its image in a '# image: NAME:TAG' line"
    return m.group(1)


def dockerfile_arg(name: str) -> str:
    m = re.search(rf"^ARG {name}=(\S+)$", dockerfile(), re.M)
    assert m, f"deploy/Dockerfile has no 'ARG {name}=...'"
    return m.group(1)


def pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def kuberay_resources(value: str) -> dict:
    """What `ray start` receives for rayStartParams.resources.

    KubeRay pastes the value into a shell command line as `--resources=<value>`; split it the
    way the shell does and parse the JSON that reaches Ray.
    """
    (arg,) = shlex.split(f"--resources={value}")
    return json.loads(arg.removeprefix("--resources="))


def ray_cluster_specs() -> list[tuple[str, dict]]:
    """(where, RayClusterSpec) of the RayCluster and of the RayJob's own cluster."""
    (rc,) = load_yaml_docs(DEPLOY / "kuberay" / "raycluster.yaml")
    job = next(d for d in load_yaml_docs(DEPLOY / "kuberay" / "rayjob.yaml") if d["kind"] == "RayJob")
    return [("raycluster.yaml", rc["spec"]), ("rayjob.yaml", job["spec"]["rayClusterSpec"])]


SPECS = ray_cluster_specs()
SPEC_IDS = [where for where, _ in SPECS]


def only_container(template: dict) -> dict:
    (container,) = template["spec"]["containers"]
    return container


def prefixed(resources: dict, prefix: str) -> dict:
    return {k.removeprefix(prefix): v for k, v in resources.items() if k.startswith(prefix)}


# ---------------------------------------------------------------- cluster launcher (cluster.yaml)


def ray_validate(config: dict) -> dict:
    """What `ray up` does to a config before it contacts the cloud: fill in the defaults of the
    provider, check the docker section, set per-type worker limits, then validate against
    ray/autoscaler/ray-schema.json plus the cross-field checks."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_config_passes_rays_own_validator():
    prepared = ray_validate(cluster_config())
    assert prepared["provider"]["type"] == "aws"
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0


def _break_resource_type(c):
    c["available_node_types"]["gpu-h100-80gb"]["resources"]["GPU"] = "8"


def _break_unknown_key(c):
    c["available_node_type"] = c.pop("available_node_types")


def _break_head_type(c):
    c["head_node_type"] = "no-such-type"


def _break_min_workers(c):
    c["max_workers"] = 0
    c["available_node_types"]["gpu-l4-24gb"]["min_workers"] = 1


@pytest.mark.parametrize(
    "breakage", [_break_resource_type, _break_unknown_key, _break_head_type, _break_min_workers]
)
def test_a_broken_cluster_config_fails_rays_validator(breakage):
    import jsonschema

    config = cluster_config()
    breakage(config)
    with pytest.raises((jsonschema.ValidationError, ValueError, KeyError)):
        ray_validate(config)


def test_cluster_config_gpu_types_follow_the_resource_convention():
    config = cluster_config()
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "the head must not run trials"
    assert "GPU" not in head["resources"]
    models = []
    for name, node_type in types.items():
        if name == config["head_node_type"]:
            continue
        res = node_type["resources"]
        gpus = res.get("GPU", 0)
        assert isinstance(gpus, int) and gpus >= 1, name
        assert node_type["min_workers"] == 0, f"{name}: idle GPUs must cost nothing"
        assert node_type["max_workers"] >= 1, name
        (model_count,) = prefixed(res, "gpu_model:").values()
        assert model_count == gpus, f"{name}: gpu_model:<LABEL> must equal the node's GPU count"
        assert list(prefixed(res, "accelerator_type:").values()) == [1], name
        models.extend(prefixed(res, "gpu_model:"))
    assert len(models) == len(set(models)) >= 3, "one worker type per GPU model"
    assert config["max_workers"] >= sum(t.get("min_workers", 0) for t in types.values())


def test_cluster_config_runs_the_stepscope_image_with_token_auth():
    config = cluster_config()
    assert config["docker"]["image"] == dockerfile_image()
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    start = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "ray start --head" in start and "--address=$RAY_HEAD_IP:6379" in start


# ---------------------------------------------------------------- KubeRay manifests


def test_kuberay_kinds_and_versions():
    (rc,) = load_yaml_docs(DEPLOY / "kuberay" / "raycluster.yaml")
    assert (rc["apiVersion"], rc["kind"]) == ("ray.io/v1", "RayCluster")
    kinds = {(d["apiVersion"], d["kind"]) for d in load_yaml_docs(DEPLOY / "kuberay" / "rayjob.yaml")}
    assert kinds == {("v1", "ConfigMap"), ("ray.io/v1", "RayJob")}
    for where, spec in SPECS:
        assert spec["rayVersion"] == dockerfile_arg("RAY_VERSION"), where
        assert spec["authOptions"] == {"mode": "token"}, where
        assert spec["enableInTreeAutoscaling"] is True, where


@pytest.mark.parametrize("spec", [s for _, s in SPECS], ids=SPEC_IDS)
def test_kuberay_worker_groups(spec):
    names = [g["groupName"] for g in spec["workerGroupSpecs"]]
    assert len(names) == len(set(names)) >= 3, "group names must be unique, one per GPU model"
    models, products = set(), set()
    for group in spec["workerGroupSpecs"]:
        name = group["groupName"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), f"{name}: not a DNS-1123 label"
        assert group["minReplicas"] == 0 and group.get("replicas", 0) <= group["maxReplicas"], name
        pod = group["template"]["spec"]
        container = only_container(group["template"])
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        gpus = int(limits[GPU_KEY])
        assert gpus >= 1 and int(requests[GPU_KEY]) == gpus, f"{name}: GPU request must equal limit"
        ray_res = kuberay_resources(group["rayStartParams"]["resources"])
        assert all(isinstance(v, int) for v in ray_res.values()), name
        (model, count), = prefixed(ray_res, "gpu_model:").items()
        assert count == gpus, f"{name}: gpu_model:{model} must equal the nvidia.com/gpu limit"
        assert list(prefixed(ray_res, "accelerator_type:").values()) == [1], name
        assert any(t.get("key") == GPU_KEY for t in pod["tolerations"]), f"{name}: no GPU toleration"
        products.add(pod["nodeSelector"][GPU_PRODUCT_LABEL])
        models.add(model)
    assert len(models) == len(products) == len(names), "each group: its own model and node pool"


@pytest.mark.parametrize("spec", [s for _, s in SPECS], ids=SPEC_IDS)
def test_kuberay_head_runs_no_trials(spec):
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert GPU_KEY not in only_container(head["template"])["resources"]["limits"]


@pytest.mark.parametrize("spec", [s for _, s in SPECS], ids=SPEC_IDS)
def test_rays_kuberay_parser_reads_the_resources_we_mean(spec):
    """The autoscaler's own reading of the manifest: it must see each group's GPUs and custom
    resources (the quoting of rayStartParams.resources is what usually goes wrong)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    cr = {"metadata": {"name": "stepscope", "namespace": "default"}, "spec": copy.deepcopy(spec)}
    config = _derive_autoscaling_config_from_ray_cr(cr)  # also runs validate_config
    for group in spec["workerGroupSpecs"]:
        seen = config["available_node_types"][group["groupName"]]["resources"]
        gpus = int(only_container(group["template"])["resources"]["limits"][GPU_KEY])
        assert seen["GPU"] == gpus
        for key, value in kuberay_resources(group["rayStartParams"]["resources"]).items():
            assert seen[key] == value
        assert seen["CPU"] >= 1


def test_the_same_gpu_models_everywhere():
    def pairs(resources_list):
        return {
            (next(iter(prefixed(r, "accelerator_type:"))), next(iter(prefixed(r, "gpu_model:"))))
            for r in resources_list
        }

    config = cluster_config()
    launcher = pairs(
        t["resources"] for n, t in config["available_node_types"].items() if n != config["head_node_type"]
    )
    for where, spec in SPECS:
        kuberay = pairs(kuberay_resources(g["rayStartParams"]["resources"]) for g in spec["workerGroupSpecs"])
        assert kuberay == launcher, where
    local = set(re.findall(r'"[a-z0-9]+\|([A-Za-z0-9]+)\|([A-Za-z0-9-]+)"', SCRIPT.read_text()))
    assert local and local <= launcher, "local-cluster.sh fakes GPUs the real clusters have"


def test_every_image_is_the_dockerfiles_image():
    image = dockerfile_image()
    name, tag = image.rsplit(":", 1)
    assert tag == pyproject()["project"]["version"]
    for where, spec in SPECS:
        templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
        for template in templates:
            assert only_container(template)["image"] == image, where


def test_rayjob_runs_stepscope_on_the_shipped_spec(cli_runner, tmp_path):
    docs = load_yaml_docs(DEPLOY / "kuberay" / "rayjob.yaml")
    job = next(d for d in docs if d["kind"] == "RayJob")
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["stepscope", "run"]
    assert argv[argv.index("--store") + 1].startswith("s3://")
    spec_path = Path(argv[2])

    # The spec comes from the ConfigMap, mounted at the same path on the head and every worker.
    cluster = job["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for template in templates:
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        mount = next(m for m in only_container(template)["volumeMounts"] if m["mountPath"] == str(spec_path.parent))
        assert volumes[mount["name"]]["configMap"]["name"] == config_map["metadata"]["name"]
    text = config_map["data"][spec_path.name]

    # ... and is a valid sweep whose GPU types the job's cluster offers.
    path = tmp_path / spec_path.name
    path.write_text(text)
    result = cli_runner("plan", str(path))
    assert result.exit_code == 0, result.output
    offered = set()
    for group in cluster["workerGroupSpecs"]:
        res = kuberay_resources(group["rayStartParams"]["resources"])
        offered |= set(prefixed(res, "accelerator_type:")) | set(prefixed(res, "gpu_model:"))
    gpus = yaml.safe_load(text)["gpus"]
    assert gpus and set(gpus) <= offered


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_builds_on_a_pinned_cuda_pytorch_image():
    base = dockerfile_arg("BASE_IMAGE")
    assert re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-(runtime|devel)", base), base
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", dockerfile(), re.M)


def test_dockerfile_installs_stepscope_and_the_pinned_ray_without_touching_torch():
    from packaging.requirements import Requirement

    text = dockerfile()
    install = " ".join(re.findall(r"pip install [^\n]*", text))
    assert re.search(r"pip install --constraint \S+ \"ray\[default\]==\$\{RAY_VERSION\}\" \.", install)
    assert "torch" not in install.replace("torch-constraint", ""), "torch must not be (re)installed"
    ray_req = next(Requirement(r) for r in pyproject()["project"]["dependencies"] if r.startswith("ray"))
    assert "default" in ray_req.extras
    assert ray_req.specifier.contains(dockerfile_arg("RAY_VERSION"))
    # Everything the wheel is built from is copied in.
    build = pyproject()["tool"]["hatch"]["build"]["targets"]["wheel"]
    (package,) = build["packages"]  # src/stepscope: its links name the folders the wheel holds
    links = [p for p in (ROOT / package).iterdir() if p.is_symlink()]
    assert {p.name for p in links} == {"orchestrator", "workloads", "analysis", "queries"}
    needed = ["pyproject.toml", "README.md", package.split("/")[0], *(p.resolve().name for p in links)]
    copied = " ".join(re.findall(r"^COPY (.*)$", text, re.M))
    for path in needed:
        assert re.search(rf"(^| ){re.escape(path)}( |$)", copied), f"{path} is not copied"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore


# ---------------------------------------------------------------- local-cluster.sh


def test_local_cluster_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.parametrize("args", [[], ["bogus"], ["up", "extra"]])
def test_local_cluster_script_usage(args):
    result = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=10)
    assert result.returncode == 2
    assert "usage: deploy/local-cluster.sh up|down|status" in result.stderr


def test_local_cluster_script_never_runs_ray_stop():
    code = [ln for ln in SCRIPT.read_text().splitlines() if not ln.lstrip().startswith("#")]
    assert not [ln for ln in code if re.search(r"\bstop\b", ln) and "ray" in ln.lower()]


def test_local_cluster_script_refuses_an_unknown_dashboard_setting():
    result = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True, timeout=10,
                            env={"PATH": "/usr/bin:/bin", "STEPSCOPE_LOCAL_DASHBOARD": "yes"})
    assert result.returncode == 2
    assert result.stderr == "local-cluster: STEPSCOPE_LOCAL_DASHBOARD must be 1 or 0, not 'yes'\n"


def test_the_documented_job_server_is_the_one_the_script_starts_by_default():
    """The local cluster runs a job server unless told not to, and the docs' submit
    commands name its default address (the script's default port, + 1 for the base, + 7)."""
    text = SCRIPT.read_text()
    assert "DASHBOARD=${STEPSCOPE_LOCAL_DASHBOARD:-1}\n" in text
    port = int(re.search(r"^PORT=\$\{STEPSCOPE_LOCAL_PORT:-(\d+)\}$", text, re.M).group(1))
    assert "PORT_BASE=${STEPSCOPE_LOCAL_PORT_BASE:-$((PORT + 1))}\n" in text
    assert "JOBS_ADDRESS=http://127.0.0.1:$((PORT_BASE + 7))\n" in text
    jobs = f"http://127.0.0.1:{port + 1 + 7}"
    for readme in (ROOT / "docs" / "cluster.md", DEPLOY / "README.md"):
        submits = re.findall(r"stepscope submit \S+ --address (http://127\.0\.0\.1:\d+)", readme.read_text())
        assert submits and set(submits) == {jobs}, (readme, submits)
    # and no other page of the docs names another address for it
    for page in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))):
        submits = re.findall(r"stepscope submit \S+ --address (http://127\.0\.0\.1:\d+)", page.read_text())
        assert set(submits) <= {jobs}, (page, submits)
