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
