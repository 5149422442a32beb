"""Rollout engines shared by a test module (one vLLM start each), built from its ``BASE``."""

import pytest

from cluster.contract.config import load_config
from cluster.loop.launch import start_rollouts, stop_rollouts


@pytest.fixture(scope="module")
def engines(request, ray_cluster, tiny_model_path, tmp_path_factory):
    config = load_config(None, request.module.BASE)
    actors = start_rollouts(config, tiny_model_path, tmp_path_factory.mktemp("engines"))
    yield actors
    stop_rollouts(actors)
