"""A Ray actor that holds learner ranks for tests: several in real processes (one process
group per process, as in a run), a rank at a time each."""

import ray

from learner.rank import LearnerRank


@ray.remote(num_cpus=1)
class Host:
    """A process holding one learner rank at a time, of a 2-rank group that lives on."""

    def make(self, config, rank, world=2):
        self.rank = LearnerRank(config, rank, world)
        return self.rank.rendezvous() if rank == 0 else None

    def start(self, model_path, master):
        self.rank.start(model_path, master)

    def train(self, batch):
        return self.rank.train_step(batch)

    def weights(self):
        return self.rank.weights()

    def call(self, method, *args):
        return getattr(self.rank, method)(*args)
