"""Shared fixtures: one real local Ray instance for the whole session."""

import os

import pytest

# Ray and vLLM read these at import time; keep test clusters small and quiet on 2 cores.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray instance (2 CPUs, no dashboard), shut down after the session."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """The embedded tiny model (random init), written once per session."""
    from cluster.policy.embedded import build_embedded

    return str(build_embedded(tmp_path_factory.mktemp("models") / "tiny"))
