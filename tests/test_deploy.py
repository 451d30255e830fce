"""Every file in deploy/ checked here, without a cloud: the Dockerfile against the repository
and the Makefile, the `ray up` config with Ray's own validator, the KubeRay manifests with
kubernetes-validate and KubeRay's ray.io/v1 fields. The SLURM script runs for real in
tests/test_slurm.py."""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT, jamsweep
from tests.kuberay_schema import SCHEMAS

DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
K8S_VERSION = "1.30.0"  # a Kubernetes that KubeRay 1.1-1.3 supports
IMAGE_DIR = "/opt/jamsweep"  # where deploy/Dockerfile puts the repository in the image


def test_every_deploy_file_is_checked_here_or_in_test_slurm():
    checked = {
        "Dockerfile",
        "ray-cluster.yaml",
        "kuberay/raycluster.yaml",
        "kuberay/rayjob.yaml",
        "kuberay/storage.yaml",
        "slurm/jamsweep.sbatch",  # tests/test_slurm.py
    }
    present = {p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*") if p.is_file()}
    assert present == checked


# --- Dockerfile ------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; comments dropped, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def dockerfile_args() -> dict[str, str]:
    return dict(a.split("=", 1) for op, a in dockerfile() if op == "ARG")


def built_tags() -> set[str]:
    """The image tags the Dockerfile's header says to build (`docker build ... -t TAG .`)."""
    return set(re.findall(r"-t (jamsweep:\w+) \.", (DEPLOY / "Dockerfile").read_text()))


def pip_install_args(command: str) -> list[str]:
    """What a `pip install` installs: its arguments less the quiet/cache flags."""
    words = shlex.split(command)
    words = words[words.index("install") + 1 :]
    return [w for w in words if w not in ("--quiet", "-q", "--no-cache-dir")]


def test_dockerfile_builds_on_the_ray_image_of_the_installed_ray_cpu_or_gpu():
    import ray

    args = dockerfile_args()
    (base,) = [a for op, a in dockerfile() if op == "FROM"]
    assert base == "rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${VARIANT}"
    assert args["RAY_VERSION"] == ray.__version__  # clients and cluster must run one Ray
    assert args["PYTHON_TAG"] == f"py{sys.version_info.major}{sys.version_info.minor}"
    assert args["VARIANT"] == "cpu"
    header = (DEPLOY / "Dockerfile").read_text()
    assert "--build-arg VARIANT=gpu -t jamsweep:gpu ." in header
    assert built_tags() == {"jamsweep:cpu", "jamsweep:gpu"}


def test_dockerfile_copies_what_exists_and_installs_as_the_makefile_does():
    copies = [shlex.split(a) for op, a in dockerfile() if op == "COPY"]
    sources = [src for words in copies for src in words[:-1]]
    assert sources and all((ROOT / s).exists() for s in sources), sources
    packages = {"schemas", "workers", "orchestrator"}  # pyproject's packages.find
    assert packages | {"pyproject.toml", "README.md", "examples"} <= set(sources)
    (run,) = [a for op, a in dockerfile() if op == "RUN"]
    makefile = (ROOT / "Makefile").read_text()
    install_rule = makefile.split("$(STAMP): pyproject.toml", 1)[1].split("\n\n", 1)[0]
    (make_install,) = re.findall(r"^\t\$\(PY\) -m pip install .*-e .*$", install_rule, re.M)
    assert run.startswith("python -m pip install")
    assert pip_install_args(run) == pip_install_args(make_install) == ["-e", ".[dev]"]


# --- ray up ----------------------------------------------------------------------------------


def ray_cluster() -> dict:
    return yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())


def ray_start_options() -> set[str]:
    from ray.scripts.scripts import start

    return {opt for param in start.params for opt in param.opts}


def test_ray_cluster_config_passes_rays_validator_and_a_typo_does_not():
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(ray_cluster())  # what `ray up` does before it starts nodes
    validate_config(prepared)
    typo = ray_cluster()
    typo["available_node_types"]["gpu_worker"]["max_worker"] = 8
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        validate_config(prepare_config(typo))


def test_ray_cluster_has_a_bounded_gpu_worker_group_and_names_the_gpu_image():
    config = ray_cluster()
    nodes = config["available_node_types"]
    workers = {k: v for k, v in nodes.items() if k != config["head_node_type"]}
    gpu = [
        v
        for v in workers.values()
        if re.match(r"(g4dn|g5|g6|p3|p4d|p5)\.", v["node_config"]["InstanceType"])
    ]
    assert gpu, workers
    for group in gpu:
        assert 0 <= group["min_workers"] <= group["max_workers"] <= config["max_workers"]
    assert config["idle_timeout_minutes"] > 0
    assert nodes[config["head_node_type"]]["resources"] == {"CPU": 0}  # runs go to workers
    assert config["docker"]["image"] == "jamsweep:gpu" and config["docker"]["image"] in built_tags()


def test_ray_cluster_setup_commands_run_and_start_commands_use_real_ray_options(tmp_path):
    config = ray_cluster()
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("0" * 64)
    for command in config["setup_commands"]:  # as on a node of the image: jamsweep on PATH
        proc = subprocess.run(
            ["bash", "-c", command],
            env={"HOME": str(home), "PATH": f"{BIN}:/usr/bin:/bin"},
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, (command, proc.stderr)
    assert (home / ".ray" / "auth_token").stat().st_mode & 0o777 == 0o600
    known = ray_start_options()
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    used = [
        w.split("=")[0]
        for c in starts
        if "ray start" in c
        for w in shlex.split(c)
        if w.startswith("--")
    ]
    assert {"--head", "--address", "--dashboard-host"} <= set(used)
    assert set(used) <= known, set(used) - known
    assert all("RAY_AUTH_MODE=token ray start" in c for c in starts if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}


# --- KubeRay ---------------------------------------------------------------------------------


def manifests() -> dict[str, dict]:
    """Every object in deploy/kuberay, by kind (one RayCluster, one RayJob) or PVC name."""
    found: dict[str, dict] = {}
    for path in sorted((DEPLOY / "kuberay").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            key = doc["metadata"]["name"] if doc["kind"] == "PersistentVolumeClaim" else doc["kind"]
            assert key not in found, f"two {key} in deploy/kuberay"
            found[key] = doc
    return found


def pod_templates(objects: dict[str, dict]) -> dict[str, dict]:
    """Every pod template of the RayCluster and the RayJob, by where it sits."""
    cluster, job = objects["RayCluster"]["spec"], objects["RayJob"]["spec"]
    pods = {"job.submitter": job["submitterPodTemplate"]}
    for name, spec in (("cluster", cluster), ("job.cluster", job["rayClusterSpec"])):
        pods[f"{name}.head"] = spec["headGroupSpec"]["template"]
        for group in spec["workerGroupSpecs"]:
            pods[f"{name}.{group['groupName']}"] = group["template"]
    return pods


def test_kuberay_objects_have_the_fields_of_kuberays_v1_schema_and_a_typo_fails():
    objects = manifests()
    assert set(objects) == {"RayCluster", "RayJob", "jamsweep-data", "jamsweep-results"}
    for kind in ("RayCluster", "RayJob"):
        jsonschema.validate(objects[kind], SCHEMAS[kind])
    typo = copy.deepcopy(objects["RayJob"])
    typo["spec"]["shutdownAfterJobFinish"] = typo["spec"].pop("shutdownAfterJobFinishes")
    with pytest.raises(jsonschema.ValidationError, match="shutdownAfterJobFinish"):
        jsonschema.validate(typo, SCHEMAS["RayJob"])
    no_template = copy.deepcopy(objects["RayCluster"])
    del no_template["spec"]["workerGroupSpecs"][0]["template"]
    with pytest.raises(jsonschema.ValidationError, match="template"):
        jsonschema.validate(no_template, SCHEMAS["RayCluster"])


def test_kuberay_pods_and_volumes_are_valid_kubernetes_objects_and_a_typo_fails():
    objects = manifests()
    for name in ("jamsweep-data", "jamsweep-results"):
        kubernetes_validate.validate(objects[name], K8S_VERSION, strict=True)
    for where, template in pod_templates(objects).items():
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, **template}
        try:
            kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {exc.message} at {list(exc.path)}")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}
    pod["spec"] = {"containers": [{"name": "c", "image": "i", "volumeMount": []}]}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_kuberay_cluster_and_job_agree_and_use_the_image_token_and_volumes():
    import ray

    objects = manifests()
    cluster, job = objects["RayCluster"]["spec"], objects["RayJob"]["spec"]
    assert job["rayClusterSpec"] == cluster  # one cluster definition, in both files
    assert cluster["rayVersion"] == dockerfile_args()["RAY_VERSION"] == ray.__version__
    assert job["shutdownAfterJobFinishes"] is True
    (gpu,) = cluster["workerGroupSpecs"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert 0 <= gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    params = [cluster["headGroupSpec"]["rayStartParams"], gpu["rayStartParams"]]
    assert {f"--{k}" for p in params for k in p} <= ray_start_options()
    claims = {"jamsweep-data", "jamsweep-results"}
    for where, template in pod_templates(objects).items():
        (container,) = template["spec"]["containers"]
        assert container["image"] in built_tags(), where
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", where
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "ray-auth-token"
        volumes = template["spec"].get("volumes", [])
        assert {v["persistentVolumeClaim"]["claimName"] for v in volumes} <= claims, where
        if where != "job.submitter":
            assert {v["persistentVolumeClaim"]["claimName"] for v in volumes} == claims, where
    assert "nvidia.com/gpu" in gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    autoscaler_env = {e["name"] for e in cluster["autoscalerOptions"]["env"]}
    assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= autoscaler_env


def test_rayjob_entrypoint_submits_a_grid_of_the_image_that_jamsweep_accepts(tmp_path):
    words = shlex.split(manifests()["RayJob"]["spec"]["entrypoint"])
    assert words[:2] == ["jamsweep", "submit"]
    assert words[words.index("--address") + 1] == "auto"  # the head's Ray: the job's driver
    grid = words[2]
    assert grid.startswith(IMAGE_DIR + "/")
    local = ROOT / grid.removeprefix(IMAGE_DIR + "/")
    assert local.is_file()
    help_text = jamsweep("submit", "--help").stdout
    assert all(w in help_text for w in words if w.startswith("--"))
    # The grid as the job would read it (its data root is relative to the grid file).
    proc = jamsweep("submit", str(local), "--dry-run", "--results", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert not any(tmp_path.iterdir())
