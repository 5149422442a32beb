"""Learner ranks as Ray actors, and the group of them the driver calls together."""

from __future__ import annotations

from typing import Dict, List

import pyarrow as pa
import ray

from cluster.contract.config import RunConfig
from cluster.contract.weights import BUCKET_BYTES
from learner.rank import LearnerRank, free_port

LearnerActor = ray.remote(num_cpus=1, max_restarts=0)(LearnerRank)


class LearnerGroup:
    """W ``LearnerActor`` ranks that rendezvous on their own and are called together."""

    def __init__(self, config: RunConfig, model_path: str, num_cpus: float = 1.0) -> None:
        port = free_port()
        world = config.learner.num_ranks
        self.ranks = [
            LearnerActor.options(num_cpus=num_cpus, **config.cluster.actor_options("learner"))
            .remote(config, r, world, port, model_path)
            for r in range(world)
        ]

    def call(self, method: str, *args, **kwargs) -> list:
        return ray.get([getattr(r, method).remote(*args, **kwargs) for r in self.ranks])

    def train_step(self, batch: pa.RecordBatch) -> Dict[str, float]:
        ref = ray.put(batch)
        per_rank = self.call("train_step", ref)
        return combine_metrics(per_rank)

    def publish(self, version: int, bucket_bytes: int = BUCKET_BYTES):
        return self.call("publish", version, bucket_bytes)[0]

    def kill(self) -> None:
        for r in self.ranks:
            ray.kill(r)


def combine_metrics(per_rank: List[Dict[str, float]]) -> Dict[str, float]:
    """Rank metrics -> step metrics: counts summed, averages weighted by tokens, time max."""
    summed = ("tokens", "skipped_updates")
    first = per_rank[0]
    total = sum(m["tokens"] for m in per_rank) or 1.0
    out: Dict[str, float] = {}
    for key in first:
        if key in summed:
            out[key] = sum(m[key] for m in per_rank)
        elif key in ("groups", "informative_groups", "reward_mean", "lr"):
            out[key] = first[key]  # every rank saw the whole step
        elif key == "learner_seconds":
            out[key] = max(m[key] for m in per_rank)
        elif key == "loss":
            out[key] = sum(m[key] for m in per_rank)
        else:
            out[key] = sum(m[key] * m["tokens"] for m in per_rank) / total
    return out
