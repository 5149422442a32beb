"""The metric catalogue, the loop metrics fed from step rows, and the dashboard's queries."""

import json
import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, generate_latest

from cluster.loop.metrics import LoopMetrics
from cluster.metrics.catalogue import CATALOGUE, MetricSet

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
NAMES = {spec.name for spec in CATALOGUE}


def exported_base(name: str) -> str:
    """duet_x_total / duet_x_bucket / _sum / _count -> duet_x (the catalogue's name)."""
    for suffix in ("_total", "_bucket", "_sum", "_count", "_created"):
        if name.endswith(suffix) and name[: -len(suffix)] in NAMES:
            return name[: -len(suffix)]
    return name


def test_every_dashboard_query_uses_catalogued_metrics():
    dash = json.loads((DEPLOY / "grafana" / "duet.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    used = {exported_base(m) for e in exprs for m in re.findall(r"duet_[a-z_]+", e)}
    assert used, "the dashboard queries nothing"
    assert used <= NAMES, f"not in the catalogue: {sorted(used - NAMES)}"
    # The panels the operations issue asks for are there.
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for word in ("throughput", "accuracy", "reward", "staleness", "sync", "queue", "idle"):
        assert word in titles


def test_prometheus_config_parses_and_targets_loopback():
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = config["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets and all(t.startswith("127.0.0.1:") for t in targets)
    assert all(not 10002 <= int(t.split(":")[1]) <= 19999 for t in targets)


def test_catalogue_names_are_unique_and_prefixed():
    names = [spec.name for spec in CATALOGUE]
    assert len(names) == len(set(names))
    assert all(n.startswith("duet_") and not n.endswith("_total") for n in names)


def test_step_rows_become_labelled_series():
    registry = CollectorRegistry()
    loop = LoopMetrics("demo-g2", MetricSet(registry))
    row = {"step": 1, "policy_version": 1, "rollouts": 64.0, "completion_tokens": 230.0,
           "groups": 32.0, "informative_groups": 12.0, "reward_mean": 0.3, "reward_flags": 2.0,
           "generate_s": 0.05, "reward_s": 0.01, "queue_put_s": 0.01, "step_s": 0.3,
           "learner_seconds": 0.1, "tokens": 230.0, "loss": -0.01, "kl": 0.0,
           "clip_frac": 0.05, "ratio_mean": 1.0, "ratio_max": 1.2, "is_weight_mean": 1.0,
           "is_weight_max": 1.1, "skipped_updates": 0.0, "sync_send_s": 0.01,
           "sync_transfer_s": 0.002, "sync_load_s": 0.02, "sync_verify_s": 0.005,
           "sync_bytes": 4e6, "sync_staged_bytes": 1.3e8, "probe_max_abs_diff": 1e-5, "staleness_max": 0.0}
    loop.step(row)
    loop.step(row)
    loop.eval({"accuracy": 0.42, "mean_at_k": 0.38})
    loop.dropped("tie", 3)
    loop.restarted("rollout")
    text = generate_latest(registry).decode()

    def value(series):
        return float(re.search(rf"^{re.escape(series)} (\S+)$", text, re.M).group(1))

    assert value('duet_rollouts_total{run="demo-g2"}') == 128
    assert value('duet_groups_total{kind="tied",run="demo-g2"}') == 40
    assert value('duet_informative_group_rate{run="demo-g2"}') == 12 / 32
    assert value('duet_sync_seconds_count{phase="load",run="demo-g2"}') == 2
    assert value('duet_idle_seconds_total{role="learner",run="demo-g2"}') == 2 * (0.3 - 0.1)
    assert value('duet_eval_accuracy{metric="greedy",run="demo-g2"}') == 0.42
    assert value('duet_dropped_groups_total{reason="tie",run="demo-g2"}') == 3
    assert value('duet_actor_restarts_total{role="rollout",run="demo-g2"}') == 1
    exported = {exported_base(m) for m in re.findall(r"^(duet_[a-z_]+)", text, re.M)}
    assert exported <= NAMES


def test_readme_catalogue_matches_the_code():
    from cluster.metrics.catalogue import catalogue_markdown

    readme = (DEPLOY.parent / "README.md").read_text()
    start = readme.index("<!-- metrics catalogue: generated from cluster.metrics.catalogue_markdown() -->")
    end = readme.index("<!-- end of metrics catalogue -->")
    assert readme[start:end].split("\n", 1)[1].strip() == catalogue_markdown().strip()
