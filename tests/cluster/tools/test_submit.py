"""`duet submit` against a real Ray cluster started with `ray start --head`: the tiny job runs
through the real `ray job submit`, reaches SUCCEEDED, and its outputs and logs are checked."""

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import List

import psutil
import pytest

from cluster.cli import build_parser
from cluster.contract.config import ConfigError
from cluster.tools.audit import audit
from cluster.tools.submit import submit_command

REPO = Path(__file__).resolve().parents[3]


def free_ports(count: int) -> List[int]:
    """``count`` distinct free loopback ports outside Ray's default worker range
    (10002-19999). Every socket stays bound until all are chosen: one released at once
    can be handed out again, and two Ray components given the same port fail to start."""
    held: List[socket.socket] = []
    try:
        while len(held) < count:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            if 10002 <= s.getsockname()[1] <= 19999:
                s.close()
                continue
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def test_submit_builds_the_ray_job_command(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.5:8265")
    args = build_parser().parse_args(["submit", "--", "train", "--config", "x.yaml", "steps=2"])
    cmd = submit_command(args.address, args.duet_args)
    assert cmd[1:6] == ["job", "submit", "--address", "http://10.0.0.5:8265", "--working-dir"]
    assert cmd[cmd.index("--runtime-env") + 1].endswith("deploy/runtime_env.yaml")
    assert cmd[cmd.index("--") + 1:] == ["python", "-m", "cluster.cli", "train", "--config",
                                         "x.yaml", "steps=2"]
    monkeypatch.delenv("RAY_ADDRESS")
    with pytest.raises(ConfigError, match="no Ray cluster given"):
        submit_command(None, ["--", "train"])
    with pytest.raises(ConfigError, match="name the command"):
        submit_command("http://x:1", [])


def stop_cluster(temp_dir: str) -> None:
    """Stop only this test's Ray processes (`ray stop` would stop every cluster here)."""
    procs = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in proc.info["cmdline"] or []):
                procs.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for proc in alive:
        proc.kill()


@pytest.mark.slow
def test_ray_job_submit_runs_the_tiny_job(tiny_model_path, tmp_path):
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", RAY_AUTH_MODE="token")
    env.pop("RAY_ADDRESS", None)
    temp_dir = f"/tmp/dj-{uuid.uuid4().hex[:8]}"  # short: Ray puts unix sockets in it
    flags = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
             "runtime-env-agent-port", "metrics-export-port", "node-manager-port",
             "object-manager-port", "ray-client-server-port")
    gcs, dashboard, dash_metrics, autoscaler_metrics, *rest = free_ports(len(flags) + 4)
    # Every port away from Ray's defaults: the test session's own Ray instance holds them
    # (a second dashboard agent on 52365 fails, and the job API then refuses every job).
    ports = dict(zip(flags, rest))
    env.update(DASHBOARD_METRIC_PORT=str(dash_metrics),
               AUTOSCALER_METRIC_PORT=str(autoscaler_metrics))
    subprocess.run([str(bin_dir / "ray"), "start", "--head", f"--port={gcs}",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                    *[f"--{flag}={port}" for flag, port in ports.items()],
                    "--num-cpus=2", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
                   env=env, check=True, timeout=180, capture_output=True)
    job = f"duet-test-{uuid.uuid4().hex[:8]}"
    address = f"http://127.0.0.1:{dashboard}"
    try:
        out = subprocess.run(
            [sys.executable, "-m", "cluster.cli", "submit", "--address", address,
             "--submission-id", job, "--", "train", f"model.path={tiny_model_path}",
             "name=submitted", f"output_dir={tmp_path}", "steps=3", "eval_every=0",
             "task.eval_size=16", "rollout.max_new_tokens=6", "model.max_model_len=64",
             "algo.prompts_per_step=8"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        ray_cli = [str(bin_dir / "ray"), "job"]
        status = ""
        for _ in range(30):
            status = subprocess.run(ray_cli + ["status", "--address", address, job], env=env,
                                    capture_output=True, text=True, timeout=60).stdout.lower()
            if "succeeded" in status or "failed" in status:
                break
            time.sleep(2)
        assert f"job '{job}' succeeded" in status, status
        logs = subprocess.run(ray_cli + ["logs", "--address", address, job], env=env,
                              capture_output=True, text=True, timeout=60).stdout
        assert "step 3/3" in logs and f"run written to {tmp_path / 'submitted'}" in logs
    finally:
        stop_cluster(temp_dir)
    run = tmp_path / "submitted"
    assert (run / "summary.json").exists() and (run / "metrics.csv").exists()
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-000003"]
    report = audit(run)
    assert report.ok and report.trained == 3 * 8, report.text()
