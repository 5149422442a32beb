"""Starting what a run needs on Ray: the Ray instance itself and the rollout actors."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import ray

from actors.rollout_actor import RolloutActor
from cluster.contract.config import RunConfig


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


def start_rollouts(config: RunConfig, model_path: str, state_dir: Path) -> list:
    """One RolloutActor per ``rollout.num_workers``; waits until their engines are up."""
    # A fresh home per launch: a restarted actor reads only this launch's assignment.
    home = Path(state_dir) / uuid.uuid4().hex[:12]
    placement = config.cluster.actor_options("rollout")
    actors = [RolloutActor.options(**placement).remote(config, w, model_path, str(home))
              for w in range(config.rollout.num_workers)]
    ray.get([a.state.remote() for a in actors])
    return actors
