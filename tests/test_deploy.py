"""Deployment files: the compose file validates with docker-compose, the runtime env and the
KubeRay RayJob parse and agree with the presets they run."""

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


def test_rayjob_runs_a_paper_preset_on_as_many_gpus_as_it_plans():
    job = yaml.safe_load((REPO / "deploy" / "kuberay" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:4] == ["python", "-m", "cluster.cli", "train"]
    preset = argv[argv.index("--config") + 1].replace("/opt/duet/src/", "")
    assert (REPO / preset).exists()
    overrides = [a for a in argv[argv.index("--config") + 2:]]
    config = load_config(REPO / preset, overrides)
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    gpus = workers["replicas"] * int(workers["rayStartParams"]["num-gpus"])
    planned = (config.rollout.num_workers + config.learner.num_ranks) * config.cluster.gpus_per_actor
    assert gpus == planned
