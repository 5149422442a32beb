"""A real Prometheus server (Debian's `prometheus`, on 127.0.0.1) scrapes a short duet run;
its HTTP API must return the RL loop's and the queue's series with non-zero values."""

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from cluster.contract.config import load_config
from cluster.loop.driver import Driver
from cluster.loop.launch import start_rollouts, stop_rollouts

pytestmark = pytest.mark.slow


def free_port_pair() -> int:
    """A port p with p and p + 1 free, outside Ray's worker range (10002-19999)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if 10002 <= port <= 19999 or port >= 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


def query(prom_port: int, expr: str) -> float:
    url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    data = json.loads(urllib.request.urlopen(url, timeout=5).read())
    result = data["data"]["result"]
    return max((float(r["value"][1]) for r in result), default=0.0)


@pytest.fixture
def prometheus(tmp_path):
    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus is needed (make test installs it: make services)"
    metrics_port, prom_port = free_port_pair(), free_port_pair()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: duet\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}', "
        f"'127.0.0.1:{metrics_port + 1}']\n")
    proc = subprocess.Popen([binary, f"--config.file={config}",
                             f"--web.listen-address=127.0.0.1:{prom_port}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield metrics_port, prom_port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_prometheus_scrapes_a_duet_run(ray_cluster, tiny_model_path, tmp_path, prometheus):
    metrics_port, prom_port = prometheus
    config = load_config(None, [
        "name=scraped", "rollout.max_new_tokens=6", "model.max_model_len=64",
        "algo.prompts_per_step=8", "algo.group_size=2", "task.eval_size=20", "eval_every=4",
        "steps=12", f"cluster.metrics_port={metrics_port}"])
    actors = start_rollouts(config, tiny_model_path, tmp_path / "engines")
    try:
        summary = Driver(config, tmp_path / "run", tiny_model_path, actors).run()
    finally:
        stop_rollouts(actors)
    assert summary.steps == 12
    # The driver's endpoint outlives the run in this process; give Prometheus a scrape.
    checks = {
        'duet_rollouts_total{run="scraped"}': 12 * 16,
        'duet_rollout_tokens_total{run="scraped"}': 1,
        'duet_steps_total{run="scraped"}': 12,
        'duet_sync_seconds_count{run="scraped", phase="load"}': 1,
        'duet_learner_step_seconds_count{run="scraped"}': 1,
        'duet_eval_accuracy{run="scraped", metric="mean_at_k"}': None,
        # The queue actor ends with the run, so its series are stale by now: look back
        # (its last scrape may predate the last puts, so only ask for non-zero).
        'max_over_time(duet_queue_put_groups_total[5m])': 1,
        'max_over_time(duet_queue_get_seconds_count[5m])': 1,
    }
    deadline = time.monotonic() + 60
    got = {}
    while time.monotonic() < deadline:
        got = {expr: query(prom_port, expr) for expr in checks}
        if all(got[e] >= (want or 0) and (want is None or got[e] > 0) for e, want in checks.items()):
            break
        time.sleep(1)
    for expr, want in checks.items():
        if want is not None:
            assert got[expr] >= want, (expr, got)
    assert query(prom_port, 'count(up{job="duet"} == 1)') >= 1
