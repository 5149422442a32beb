"""Placement groups for a role's actors: one bundle per actor, packed on as few nodes as fit.

Packing keeps a learner's ranks (and their collectives) inside a node where they can be, and
places each role all or nothing: a cluster that cannot fit a role says so, with what was
asked and what is free, instead of leaving half its actors pending forever.
"""

from __future__ import annotations

from typing import Literal, Tuple

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.contract.config import RunConfig


def reserve(config: RunConfig, role: Literal["rollout", "learner"], count: int,
            num_cpus: float = 1.0) -> PlacementGroup:
    """A ready placement group of ``count`` bundles for ``role``; RuntimeError if it won't fit."""
    cluster = config.cluster
    bundle = cluster.bundle(role, num_cpus)
    group = placement_group([bundle] * count, strategy="PACK")
    try:
        ray.get(group.ready(), timeout=cluster.placement_timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(group)
        raise RuntimeError(
            f"the cluster could not place {count} {role} actor(s) of {bundle} each within "
            f"{cluster.placement_timeout_s:g} s (cluster.placement_timeout_s); it has "
            f"{ray.available_resources()} free: add nodes, or ask for fewer actors or GPUs "
            "(rollout.num_workers, learner.num_ranks, cluster.gpus_per_actor)") from None
    return group


def learner_placement(config: RunConfig, engines) -> Tuple[PlacementGroup, bool]:
    """Where the learner ranks go, and whether their group owns it: their own group when
    split; colocated, the engines' bundles (rank r beside engine r), which stay theirs."""
    if config.cluster.placement != "colocated":
        return reserve(config, "learner", config.learner.num_ranks), True
    group = getattr(engines, "placement", None)
    if group is None:
        raise RuntimeError("cluster.placement=colocated puts learner ranks in the engines' "
                           "bundles, and these engines were not started in a placement group "
                           "(start them with cluster.loop.launch.start_rollouts)")
    return group, False


def in_bundle(group: PlacementGroup, index: int) -> PlacementGroupSchedulingStrategy:
    """The scheduling strategy that puts an actor in bundle ``index`` of ``group``."""
    return PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index)
