"""How many CPU threads an actor's torch ops use: set once, as the actor starts.

Ray starts an actor with ``OMP_NUM_THREADS`` equal to the CPUs it asked for, so a learner
rank of ``num_cpus=1`` would train on one thread of a many-core node while, in sync mode,
the engines beside it sit idle. ``RunConfig.cpu_threads`` says what the role may use;
``use_cpu_threads`` applies it to this process.
"""

from __future__ import annotations

from typing import List, Literal, Optional

import torch

from cluster.contract.config import RunConfig, node_cores


def granted_cpus() -> float:
    """The CPUs Ray gave this actor (the node's cores outside a Ray worker)."""
    try:
        import ray

        if ray.is_initialized():
            return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0))
    except (ImportError, AssertionError):  # Ray answers only inside its workers
        pass
    return float(node_cores())


def use_cpu_threads(config: RunConfig, role: Literal["rollout", "learner"], sharing: int
                    ) -> Optional[int]:
    """Set this process's torch threads for ``role`` (``sharing``: the role's actors on this
    node); returns the count, or None where nothing changes (GPUs)."""
    threads = config.cpu_threads(role, sharing, granted_cpus())
    if threads is not None:
        torch.set_num_threads(threads)
    return threads


def sharing_of(group, count: int) -> List[int]:
    """For each of the first ``count`` bundles of a ready placement group, how many of them
    share its node (the actors that split that node's cores)."""
    import ray

    nodes = ray.util.placement_group_table(group)["bundles_to_node_id"]
    placed = [nodes.get(i) for i in range(count)]
    return [placed.count(node) for node in placed]
