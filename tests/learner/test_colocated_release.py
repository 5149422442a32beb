"""Colocated: every learner rank hands its cached GPU memory back before any engine wakes.

Two real learner ranks (DeepSpeed on gloo, in Ray actors) train a step and send it to two
engine stand-ins that journal when the update's start wakes them. On a CPU there is no CUDA
cache, so each rank's ``learner.rank.release_cached_memory`` is replaced by one that journals
(rank 1's late, to give a missing barrier the chance to show); what runs for real is where
the ranks call it and the barrier that holds rank 0's waking of the engines until all did.
"""

import time

import pytest
import ray

from cluster.contract.config import load_config
from tests.learner.steps import step_batch

pytestmark = pytest.mark.slow

TIMINGS = {"transfer": 0.0, "load": 0.0, "verify": 0.0}


@ray.remote(num_cpus=0)
class Journal:
    def __init__(self):
        self.events = []

    def add(self, event):
        self.events.append(event)

    def read(self):
        return list(self.events)


@ray.remote(num_cpus=0)
class EngineStandIn:
    """The calls the object-store sender makes; the start is what wakes a real engine."""

    def __init__(self, journal, index):
        self.journal, self.index = journal, index

    def start_weight_update(self, manifest, mode=None):
        ray.get(self.journal.add.remote(f"engine {self.index} woken"))

    def load_bucket(self, index, expected_digest, data, finish=None):
        return None if finish is None else dict(TIMINGS)

    def finish_weight_update(self, verify=True):
        return dict(TIMINGS)


@ray.remote(num_cpus=1)
class Rank:
    def make(self, config, rank, world, journal):
        import learner.rank as module

        def release(device, _rank=rank):
            if _rank == 1:
                time.sleep(5.0)
            ray.get(journal.add.remote(f"rank {_rank} released"))

        module.release_cached_memory = release
        self.rank = module.LearnerRank(config, rank, world)
        return self.rank.rendezvous() if rank == 0 else None

    def start(self, model_path, master):
        self.rank.start(model_path, master)

    def train_and_send(self, batch, version, actors):
        return self.rank.train_and_send(batch, version, actors)


def run(placement, model_path):
    config = load_config(None, [f"cluster.placement={placement}", "rollout.num_workers=2",
                                "learner.num_ranks=2", "learner.micro_batch_tokens=64"])
    journal = Journal.remote()
    engines = [EngineStandIn.remote(journal, i) for i in range(2)]
    ranks = [Rank.remote() for _ in range(2)]
    try:
        master = ray.get([r.make.remote(config, i, 2, journal) for i, r in enumerate(ranks)])[0]
        ray.get([r.start.remote(model_path, master) for r in ranks])
        done = ray.get([r.train_and_send.remote(step_batch(seed=5), 1, engines) for r in ranks])
        assert done[0]["sync"]["errors"] == {}
        return ray.get(journal.read.remote())
    finally:
        for actor in (*ranks, *engines, journal):
            ray.kill(actor)


def test_each_rank_releases_its_cache_before_any_engine_wakes(ray_cluster, tiny_model_path):
    events = run("colocated", tiny_model_path)
    first_woken = min(i for i, e in enumerate(events) if e.endswith("woken"))
    assert sorted(events[:first_woken]) == ["rank 0 released", "rank 1 released"], events
    assert sorted(events[first_woken:]) == ["engine 0 woken", "engine 1 woken"], events


def test_split_ranks_keep_their_cache(ray_cluster, tiny_model_path):
    assert sorted(run("split", tiny_model_path)) == ["engine 0 woken", "engine 1 woken"]
