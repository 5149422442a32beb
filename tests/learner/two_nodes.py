"""Run by test_multinode.py in its own process: the same two learner ranks trained on one
Ray node and across two (``ray.cluster_utils.Cluster``, two raylets on this machine); prints
where the ranks ran and how far the two runs' weights are apart, as JSON."""

import json
import sys
import tempfile
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from cluster.contract.config import load_config
from cluster.loop.placement import reserve
from cluster.policy.embedded import build_embedded
from learner.learner_actor import LearnerGroup
from tests.learner.steps import LR, step_batch


def train(model: str, nodes: int):
    cpus = 2 // nodes  # one CPU a node for two nodes: the packed group must span both
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=cpus)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        config = load_config(None, ["learner.num_ranks=2", f"learner.lr={LR}",
                                    "learner.micro_batch_tokens=24"])
        group = LearnerGroup(config, model, reserve(config, "learner", 2))
        try:
            where = group.call("node_id")
            losses = [group.train_step(step_batch(seed=s))["loss"] for s in range(2)]
            weights = group.call("weights")[0]
        finally:
            group.kill()
        return where, losses, weights
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    model = str(build_embedded(Path(tempfile.mkdtemp()) / "tiny"))
    one = train(model, 1)
    two = train(model, 2)
    diff = max(float((one[2][k] - two[2][k]).abs().max()) for k in one[2])
    json.dump({"one_node": {"nodes": one[0], "losses": one[1]},
               "two_nodes": {"nodes": two[0], "losses": two[1]},
               "max_weight_diff": diff}, sys.stdout)


if __name__ == "__main__":
    main()
