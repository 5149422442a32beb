"""``RolloutActor``: the restartable Ray actor around a ``RolloutWorker``.

A thin wrapper: it turns the replay queue actor into the worker's sink, resolves weight
buckets from Ray's object store (read-only views of its shared memory, no copy), and records
each assignment (config, queue name, state folder) so that an actor Ray restarts after a
crash resumes the same run from its saved cursor. A restarted actor reports policy version
-1 (its engine holds the initial weights, not the run's) until the driver resyncs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Sequence

import ray

from actors.rollout import RolloutWorker
from cluster.contract.config import RunConfig, load_config, to_dict
from cluster.contract.files import atomic_write_json
from cluster.contract.schema import to_ipc
from cluster.contract.weights import WeightManifest


def find_queue(name: Optional[str]):
    """The named queue actor; None when there is none, or when its run has ended and
    released it (a queue that crashed is restarted by Ray under the same name)."""
    if not name:
        return None
    try:
        return ray.get_actor(name)
    except ValueError:
        return None


def queue_sink(queue):
    """A sink that puts a batch into a ``ReplayQueueActor`` and waits for it to be logged
    (the batch crosses as one Arrow IPC stream: ``to_ipc``)."""
    if queue is None:
        return None
    return lambda batch: ray.get(queue.put.remote(to_ipc(batch)))


class RolloutActorBase(RolloutWorker):
    """The class ``RolloutActor`` makes remote (subclass it to add methods to the actor)."""

    def __init__(self, config: RunConfig, worker: int, model_path: str, home_dir: str,
                 queue=None, sharing: int = 1) -> None:
        self._assignment = Path(home_dir) / f"assignment-{worker}.json"
        state_dir, restarted = home_dir, self._assignment.exists()
        if restarted:  # Ray restarted this actor: pick up the run it served
            saved = json.loads(self._assignment.read_text())
            config, state_dir = load_config(saved["config"]), saved["state_dir"]
            # A run that has finished released its queue: come up without one and wait
            # for the next reset rather than fail to start (and die for good).
            queue = find_queue(saved["queue"])
        super().__init__(config, worker, model_path, state_dir, queue_sink(queue), sharing)
        if restarted:
            self.policy_version = -1

    def reset(self, config: RunConfig, queue_name: Optional[str], state_dir: str) -> None:
        """Serve another run (or comparison arm): recorded first, so a restart resumes it."""
        self._assignment.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self._assignment, {"config": to_dict(config), "queue": queue_name,
                                             "state_dir": state_dir})
        queue = find_queue(queue_name)
        if queue_name and queue is None:
            raise ValueError(f"no replay queue named {queue_name!r} to serve")
        self.assign(config, queue_sink(queue), state_dir)
        self.policy_version = -1

    def update_weights(self, manifest: WeightManifest, buckets: Sequence[object]
                       ) -> Dict[str, float]:
        # The learner publishes numpy buckets: ray.get gives views of the shared store.
        payload = [ray.get(b) if isinstance(b, ray.ObjectRef) else b for b in buckets]
        return super().update_weights(manifest, payload)

    def load_bucket(self, index: int, expected_digest: str, data: Sequence[object],
                    finish: Optional[bool] = None) -> Optional[Dict[str, float]]:
        # The bucket's ref travels inside a list so Ray leaves it unresolved until here,
        # where ray.get gives a view of the shared store.
        (ref,) = data
        return super().load_bucket(index, expected_digest, ray.get(ref), finish)

    def placement_group_id(self) -> str:
        """The placement group this actor runs in (colocation checks)."""
        import ray

        return ray.get_runtime_context().get_placement_group_id()

    def node_id(self) -> str:
        """The Ray node this actor runs on (placement checks)."""
        return ray.get_runtime_context().get_node_id()


# One engine per actor process; restarted by Ray (it resumes from its saved cursor), and
# calls interrupted by a crash are retried (``request_id`` keeps a retry from doubling).
RolloutActor = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)(RolloutActorBase)
