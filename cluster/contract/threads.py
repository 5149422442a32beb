"""How many CPU threads an actor's torch ops use: set once, as the actor starts.

Ray starts an actor with ``OMP_NUM_THREADS`` equal to the CPUs it asked for, so a learner
rank of ``num_cpus=1`` would train on one thread of a many-core node while, in sync mode,
the engines beside it sit idle. ``RunConfig.cpu_threads`` says what the role may use;
``use_cpu_threads`` applies it to this process.
"""

from __future__ import annotations

import os
from typing import Literal, Optional

import torch

from cluster.contract.config import RunConfig, node_cores


def granted_cpus() -> float:
    """The CPUs this process was granted: Ray starts an actor with ``OMP_NUM_THREADS`` set to
    its ``num_cpus``; a plain process (no such setting) has the node's cores."""
    try:
        return float(os.environ["OMP_NUM_THREADS"])
    except (KeyError, ValueError):
        return float(node_cores())


def use_cpu_threads(config: RunConfig, role: Literal["rollout", "learner"], sharing: int
                    ) -> Optional[int]:
    """Set this process's torch threads for ``role`` (``sharing``: the role's actors on this
    node); returns the count, or None where nothing changes (GPUs)."""
    threads = config.cpu_threads(role, sharing, granted_cpus())
    if threads is not None:
        torch.set_num_threads(threads)
    return threads

