"""The catalogue of duet's Prometheus metrics, and the factory every component uses.

Every metric duet exports is declared once here (name, type, labels, meaning), so the docs,
the Grafana dashboard and the code cannot disagree: components ask ``MetricSet`` for a
metric by name and get the prometheus-client object registered on their registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.registry import REGISTRY

PREFIX = "duet_"
SECONDS_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
STALENESS_BUCKETS = (0, 1, 2, 3, 4, 8, 16)


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric."""

    name: str
    """Full name, with the duet_ prefix (counters also expose <name>_total)."""
    kind: str
    """'counter', 'gauge' or 'histogram'."""
    help: str
    """What it measures."""
    labels: Tuple[str, ...] = ()
    """Label names."""
    buckets: Optional[Tuple[float, ...]] = None
    """Histogram buckets."""


CATALOGUE: Tuple[MetricSpec, ...] = (
    # replay queue
    MetricSpec("duet_queue_depth_groups", "gauge", "Groups waiting in the replay queue."),
    MetricSpec("duet_queue_depth_bytes", "gauge", "Arrow bytes waiting in the replay queue."),
    MetricSpec("duet_queue_inflight_groups", "gauge", "Groups delivered but not yet acked."),
    MetricSpec("duet_queue_oldest_age_seconds", "gauge",
               "Age of the oldest waiting group (0 when empty)."),
    MetricSpec("duet_queue_put_groups", "counter", "Groups accepted by the queue."),
    MetricSpec("duet_queue_duplicate_groups", "counter",
               "Puts ignored because the group id was already logged (producer retries)."),
    MetricSpec("duet_queue_acked_groups", "counter", "Groups acked (committed) by the learner."),
    MetricSpec("duet_queue_dropped_groups", "counter", "Groups dropped, by reason.", ("reason",)),
    MetricSpec("duet_queue_staleness", "histogram",
               "Policy versions between a delivered group's producer and its consumer.",
               buckets=STALENESS_BUCKETS),
    MetricSpec("duet_queue_put_seconds", "histogram",
               "Time a put took, including waiting for capacity (backpressure).",
               buckets=SECONDS_BUCKETS),
    MetricSpec("duet_queue_get_seconds", "histogram", "Time a get took.",
               buckets=SECONDS_BUCKETS),
    MetricSpec("duet_queue_blocked_seconds", "counter",
               "Total time producers waited for capacity."),
    # the RL loop, exported by the driver; `run` is the run name (for `duet compare`,
    # <name>-g2 / <name>-g16 / <name>-g2rs, so arms sit side by side)
    MetricSpec("duet_steps", "counter", "Learner steps taken.", ("run",)),
    MetricSpec("duet_policy_version", "gauge", "Policy version the engines hold.", ("run",)),
    MetricSpec("duet_rollouts", "counter", "Completions generated.", ("run",)),
    MetricSpec("duet_rollout_tokens", "counter", "Completion tokens generated.", ("run",)),
    MetricSpec("duet_groups", "counter",
               "Groups produced, by kind: 'informative' (rewards differ) or 'tied'.",
               ("run", "kind")),
    MetricSpec("duet_informative_group_rate", "gauge",
               "Share of the last step's trained groups whose rewards differ (carry signal).",
               ("run",)),
    MetricSpec("duet_dropped_groups", "counter",
               "Groups dropped by the loop, by reason (tie, too_long, stale, reward_error).",
               ("run", "reason")),
    MetricSpec("duet_reward_mean", "gauge", "Mean reward of the last step's trained groups.",
               ("run",)),
    MetricSpec("duet_reward_flagged", "counter",
               "Samples whose reward function raised, timed out or returned a non-number.",
               ("run",)),
    MetricSpec("duet_generation_seconds", "histogram",
               "Engine time per step (slowest rollout actor).", ("run",)),
    MetricSpec("duet_reward_seconds", "histogram", "Reward scoring time per step.", ("run",)),
    MetricSpec("duet_learner_step_seconds", "histogram", "Learner time per step.", ("run",)),
    MetricSpec("duet_step_seconds", "histogram", "Wall time per step, end to end.", ("run",)),
    MetricSpec("duet_learner_tokens", "counter", "Completion tokens trained on.", ("run",)),
    MetricSpec("duet_learner_rows", "counter",
               "Completions the learner received, and those it computed, by kind (received, "
               "computed): the rest had zero advantage and were skipped "
               "(learner.skip_zero_advantage).", ("run", "kind")),
    MetricSpec("duet_learner_row_tokens", "counter",
               "Completion tokens of those completions, by kind (received, computed).",
               ("run", "kind")),
    MetricSpec("duet_loss", "gauge", "Policy loss of the last step.", ("run",)),
    MetricSpec("duet_kl", "gauge", "KL to the reference model, last step (0 when off).",
               ("run",)),
    MetricSpec("duet_clip_fraction", "gauge",
               "Share of tokens whose ratio was clipped, last step.", ("run",)),
    MetricSpec("duet_is_ratio", "gauge",
               "Importance ratio pi/pi_old over the last step's tokens, by stat (mean, max).",
               ("run", "stat")),
    MetricSpec("duet_is_weight", "gauge",
               "Truncated importance weight against the engine's logprobs, by stat (mean, max).",
               ("run", "stat")),
    MetricSpec("duet_skipped_updates", "counter", "Updates skipped for a non-finite loss.",
               ("run",)),
    MetricSpec("duet_sync_seconds", "histogram",
               "Weight-sync time by phase: send (the learner's whole send, overlapping the "
               "engines' phases), transfer, load, verify.", ("run", "phase")),
    MetricSpec("duet_sync_bytes", "counter", "Weight bytes published to the engines.", ("run",)),
    MetricSpec("duet_sync_staged_bytes", "gauge",
               "Most weight bytes staged in the object store at once during the last sync.",
               ("run",)),
    MetricSpec("duet_sync_probe_diff", "gauge",
               "Largest |logprob| difference of the last sync's verification probe.", ("run",)),
    MetricSpec("duet_staleness_max", "gauge",
               "Largest policy-version lag among the last step's groups.", ("run",)),
    MetricSpec("duet_idle_seconds", "counter",
               "Time a role spent waiting for the other, by role (rollout, learner).",
               ("run", "role")),
    MetricSpec("duet_actor_restarts", "counter",
               "Actors restarted after a failure, by role (rollout, learner).", ("run", "role")),
    MetricSpec("duet_eval_accuracy", "gauge",
               "Accuracy at the last evaluation, averaged over the evaluation sets, by metric "
               "(greedy, mean_at_k, pass_at_k).", ("run", "metric")),
    MetricSpec("duet_eval_set_accuracy", "gauge",
               "Accuracy at the last evaluation on one evaluation set, by metric (greedy, "
               "mean_at_k, pass_at_k at the set's k, maj_at_k).", ("run", "set", "metric")),
)

_BY_NAME: Dict[str, MetricSpec] = {spec.name: spec for spec in CATALOGUE}


class MetricSet:
    """Creates catalogue metrics on one registry, once each, and hands them out by name."""

    def __init__(self, registry: Optional[CollectorRegistry] = None) -> None:
        self.registry = registry if registry is not None else REGISTRY
        self._made: Dict[str, object] = {}

    def __getitem__(self, name: str):
        if name not in self._made:
            try:
                spec = _BY_NAME[name]
            except KeyError:
                raise KeyError(f"metric {name!r} is not in cluster.metrics.CATALOGUE") from None
            short = spec.name
            if spec.kind == "counter":
                metric = Counter(short, spec.help, spec.labels, registry=self.registry)
            elif spec.kind == "gauge":
                metric = Gauge(short, spec.help, spec.labels, registry=self.registry)
            else:
                metric = Histogram(short, spec.help, spec.labels, registry=self.registry,
                                   buckets=spec.buckets or SECONDS_BUCKETS)
            self._made[name] = metric
        return self._made[name]


def serve(port: int, host: str = "127.0.0.1",
          registry: Optional[CollectorRegistry] = None) -> int:
    """Expose ``registry`` on http://host:port/metrics; returns the bound port."""
    server, _ = start_http_server(port, addr=host, registry=registry or REGISTRY)
    return server.server_port


_SERVED: Dict[Tuple[str, int], int] = {}
_PROCESS_SET: Optional[MetricSet] = None


def process_metrics() -> MetricSet:
    """This process's metric set on the default registry (one per process: several runs,
    e.g. the arms of a comparison, share it and differ by their ``run`` label)."""
    global _PROCESS_SET
    if _PROCESS_SET is None:
        _PROCESS_SET = MetricSet()
    return _PROCESS_SET


def serve_once(port: int, host: str = "127.0.0.1") -> int:
    """``serve`` the default registry, at most once per (host, port) in this process."""
    key = (host, port)
    if key not in _SERVED:
        _SERVED[key] = serve(port, host)
    return _SERVED[key]


def catalogue_markdown() -> str:
    """The catalogue as a Markdown table (the README's metric list is generated from it)."""
    rows = ["| metric | type | labels | meaning |", "| --- | --- | --- | --- |"]
    for spec in CATALOGUE:
        name = spec.name + ("_total" if spec.kind == "counter" else "")
        rows.append(f"| `{name}` | {spec.kind} | {', '.join(spec.labels) or '—'} | {spec.help} |")
    return "\n".join(rows)
