"""Learner ranks as Ray actors, and the group of them the driver calls together.

The ranks of one learner live in one placement group, a bundle each (the caller reserves
it: ``cluster.loop.placement``). Rank 0 opens the rendezvous on its own node; every rank
then joins at that address, so ranks on different nodes find each other.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import pyarrow as pa
import ray
from ray.util.placement_group import PlacementGroup, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.contract.config import RunConfig
from cluster.contract.schema import to_ipc
from cluster.contract.weights import BUCKET_BYTES
from learner.rank import SHARES, LearnerRank

LearnerActor = ray.remote(num_cpus=1, max_restarts=0)(LearnerRank)


class LearnerGroup:
    """W ``LearnerActor`` ranks in one placement group, called together."""

    def __init__(self, config: RunConfig, model_path: str, placement: PlacementGroup,
                 num_cpus: float = 1.0, reference_path: Optional[str] = None,
                 owns_placement: bool = True) -> None:
        """``placement``: a ready placement group with a bundle for each rank (rank r in
        bundle r); unless ``owns_placement`` is False (colocated ranks live in the engines'
        bundles) the group owns it from here on and ``kill`` releases it.
        ``reference_path``: the KL reference."""
        world = config.learner.num_ranks
        self.placement = placement
        self.owns_placement = owns_placement
        colocated = config.cluster.placement == "colocated"
        options = (config.cluster.shared_actor_options("learner") if colocated
                   else config.cluster.actor_options("learner"))
        self.ranks = [
            LearnerActor.options(
                num_cpus=num_cpus, **options,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement, placement_group_bundle_index=r),
            ).remote(config, r, world)
            for r in range(world)
        ]
        master = ray.get(self.ranks[0].rendezvous.remote())
        sharing = sharing_of(placement, world)
        ray.get([r.start.remote(model_path, master, reference_path, sharing[i])
                 for i, r in enumerate(self.ranks)])

    def call(self, method: str, *args, **kwargs) -> list:
        return ray.get([getattr(r, method).remote(*args, **kwargs) for r in self.ranks])

    def train_step(self, batch: pa.RecordBatch, wait: bool = True):
        """One training step on every rank: the combined metrics, or with ``wait=False`` the
        ranks' futures (``combine_metrics(ray.get(futures))``). A call made to the ranks
        meanwhile (a weight send) runs right after the step, without a round trip between."""
        payload = self._payload(batch)
        futures = [r.train_step.remote(payload) for r in self.ranks]
        return combine_metrics(ray.get(futures)) if wait else futures

    def _payload(self, batch: pa.RecordBatch):
        """``batch`` as one Arrow IPC stream (``to_ipc``): several ranks share one copy in
        the object store, one rank takes it with the call."""
        stream = to_ipc(batch)
        return ray.put(stream) if len(self.ranks) > 1 else stream

    def train_and_send(self, batch: pa.RecordBatch, version: int, actors: list,
                       verify: bool = True) -> list:
        """``train_step`` then ``send_weights(version, actors)`` as one call to each rank
        (``LearnerRank.train_and_send``): the ranks' futures, each ``{"metrics", "sync"}``
        (``sync``: rank 0's report). Saves the turn between two calls on every rank."""
        payload = self._payload(batch)
        return [r.train_and_send.remote(payload, version, actors, BUCKET_BYTES, verify)
                for r in self.ranks]

    def send_weights(self, version: int, actors: list, bucket_bytes: int = BUCKET_BYTES,
                     wait: bool = True, verify: bool = True):
        """Send the weights to ``actors`` (``LearnerRank.send_weights``): rank 0's report,
        or with ``wait=False`` the ranks' futures (``ray.get(futures)[0]`` is the report).
        ``verify=False``: each engine checks the probe in its next call, not before
        answering (the training loop's own syncs)."""
        futures = [r.send_weights.remote(version, actors, bucket_bytes, verify)
                   for r in self.ranks]
        return ray.get(futures)[0] if wait else futures

    def kill(self) -> None:
        """Stop every rank and release the placement group (again: a no-op)."""
        for r in self.ranks:
            ray.kill(r)
        self.ranks = []
        if self.placement is not None and self.owns_placement:
            remove_placement_group(self.placement)
        self.placement = None


def sharing_of(group: PlacementGroup, count: int) -> List[int]:
    """For each of the first ``count`` bundles of a ready placement group, how many of them
    share its node (the actors that split that node's cores)."""
    nodes = ray.util.placement_group_table(group)["bundles_to_node_id"]
    placed = [nodes.get(i) for i in range(count)]
    return [placed.count(node) for node in placed]


def combine_metrics(per_rank: List[Dict[str, float]]) -> Dict[str, float]:
    """Rank metrics -> step metrics: counts, loss shares and clip-fraction shares summed,
    whole-step figures from rank 0, the other averages weighted by computed tokens, time max."""
    summed = ("tokens", "skipped_updates", "rows_computed", "tokens_computed", "loss",
              "pg_loss", *SHARES)
    whole_step = ("groups", "informative_groups", "reward_mean", "lr", "rows_received",
                  "tokens_received")
    first = per_rank[0]
    total = sum(m["tokens"] for m in per_rank) or 1.0
    out: Dict[str, float] = {}
    for key in first:
        if key in summed:
            out[key] = sum(m[key] for m in per_rank)
        elif key in whole_step:
            out[key] = first[key]  # every rank saw the whole step
        elif key == "learner_seconds":
            out[key] = max(m[key] for m in per_rank)
        else:
            out[key] = sum(m[key] * m["tokens"] for m in per_rank) / total
    return out
