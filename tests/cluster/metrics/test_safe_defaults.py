"""Safe defaults: what a user gets without asking (no remote code, loopback listeners)."""

import socket
import urllib.request

from prometheus_client import CollectorRegistry, Counter

from cluster.contract.config import RunConfig
from cluster.metrics.catalogue import serve


def test_defaults_do_not_trust_model_code_and_bind_loopback():
    config = RunConfig()
    assert config.model.trust_remote_code is False
    assert config.cluster.metrics_host == "127.0.0.1"


def test_metrics_endpoint_listens_on_loopback_only():
    registry = CollectorRegistry()
    Counter("duet_test_total", "a test counter", registry=registry).inc(3)
    port = serve(0, registry=registry)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "duet_test_total 3.0" in body
    # Any non-loopback address of this machine must refuse the connection.
    other = socket.gethostbyname(socket.gethostname())
    if not other.startswith("127."):
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((other, port)) != 0
