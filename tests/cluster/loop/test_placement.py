"""Placement groups on a real local Ray instance: packed bundles, and a role that cannot fit."""

import pytest
import ray

from cluster.contract.config import load_config
from cluster.loop.placement import in_bundle, reserve


def test_a_role_that_cannot_fit_fails_naming_what_it_asked_for(ray_cluster):
    config = load_config(None, ["cluster.placement_timeout_s=2"])
    with pytest.raises(RuntimeError) as err:
        reserve(config, "learner", 1, num_cpus=64)  # this instance has 2 CPUs
    message = str(err.value)
    assert "could not place 1 learner actor(s) of {'CPU': 64.0}" in message
    assert "cluster.placement_timeout_s" in message and "free" in message
    assert not [pg for pg in ray.util.placement_group_table().values()
                if pg["state"] == "PENDING"]  # the unplaceable group was removed


def test_actors_run_in_their_bundles(ray_cluster):
    config = load_config(None, [])
    group = reserve(config, "rollout", 2, num_cpus=0.5)

    @ray.remote(num_cpus=0.5)
    def where():
        return ray.get_runtime_context().get_placement_group_id()

    try:
        got = ray.get([where.options(scheduling_strategy=in_bundle(group, i)).remote()
                       for i in range(2)])
        assert got == [group.id.hex()] * 2
    finally:
        ray.util.remove_placement_group(group)
