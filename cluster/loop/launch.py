"""Starting what a run needs on Ray: the Ray instance itself and the rollout actors."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Optional

import ray
from ray.util.placement_group import PlacementGroup, remove_placement_group

from actors.rollout_actor import RolloutActor
from cluster.contract.config import RunConfig
from cluster.loop.placement import in_bundle, reserve
from learner.learner_actor import sharing_of

ROLLOUT_CPUS = 1.0  # what RolloutActor asks for by default


def start_ray(config: RunConfig) -> None:
    """Join ``cluster.address`` (or $RAY_ADDRESS) or start a local Ray instance sized for the
    run's actors."""
    if ray.is_initialized():
        return
    # Inside `ray job submit` Ray sets RAY_ADDRESS: join that cluster.
    address = config.cluster.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    needed = config.rollout.num_workers + config.learner.num_ranks
    cpus = config.cluster.num_cpus or max(needed, os.cpu_count() or 1)
    # Logical CPUs may exceed the cores: in sync mode rollout and learner take turns.
    ray.init(num_cpus=max(cpus, needed), include_dashboard=False, log_to_driver=False,
             configure_logging=False)


class Engines(list):
    """The rollout actors of a launch, and the placement group that holds their bundles."""

    placement: Optional[PlacementGroup] = None


def start_rollouts(config: RunConfig, model_path: str, state_dir: Path) -> Engines:
    """One RolloutActor per ``rollout.num_workers``, each in its bundle of one placement group
    (packed); waits until their engines are up. ``stop_rollouts`` releases them."""
    # A fresh home per launch: a restarted actor reads only this launch's assignment.
    home = Path(state_dir) / uuid.uuid4().hex[:12]
    count = config.rollout.num_workers
    engines = Engines()
    engines.placement = reserve(config, "rollout", count, ROLLOUT_CPUS)
    # Colocated, each bundle also holds a learner rank (the driver places it there).
    options = (config.cluster.shared_actor_options("rollout")
               if config.cluster.placement == "colocated"
               else config.cluster.actor_options("rollout"))
    sharing = sharing_of(engines.placement, count)
    engines.extend(
        RolloutActor.options(num_cpus=ROLLOUT_CPUS, **options,
                             scheduling_strategy=in_bundle(engines.placement, w))
        .remote(config, w, model_path, str(home), sharing=sharing[w])
        for w in range(count))
    ray.get([a.state.remote() for a in engines])
    return engines


def stop_rollouts(engines: list) -> None:
    """Kill the engines and release their placement group."""
    for actor in engines:
        ray.kill(actor)
    placement = getattr(engines, "placement", None)
    if placement is not None:
        remove_placement_group(placement)
