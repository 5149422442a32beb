"""How rollout throughput grows with rollout actors, and a run across (simulated) nodes.

Run: ``python -m benchmarks.scaling --json``

1. Rollout actors: 1, 2 and 4 ``RolloutActor``s (one vLLM engine each) generate the tiny
   task's groups concurrently; rollouts/s against the 1-actor run of the same benchmark
   (``rollouts_per_s_vs_1_actor``). This machine has 2 cores: 2 actors can at best double
   throughput, and 4 actors oversubscribe the cores (they share them; the figure shows the
   cost of that, not the scaling a 4-GPU node would see).
2. Across nodes: ``ray.cluster_utils.Cluster`` starts two raylets on this machine, one
   offering the custom resource ``rollout_node``, the other ``learner_node``; a short duet
   run pins rollout actors to the first and learner ranks to the second
   (``cluster.rollout_resource`` / ``cluster.learner_resource``). The figure records the node
   of each actor, that every weight sync crossed the boundary and passed its probe, and the
   sync seconds per step against the same run on one node (``sync_s_vs_one_node``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Dict, List

import ray

from benchmarks.common import emit, machine, parser, ratio_summary, scratch_dir, summary
from cluster.contract.config import load_config
from cluster.loop.run_log import read_rows

TINY = ["rollout.max_new_tokens=6", "model.max_model_len=64", "task.eval_size=16",
        "algo.prompts_per_step=32", "algo.group_size=2"]


def tiny_model(folder: Path) -> str:
    from cluster.policy.embedded import build_model, build_tokenizer, save_model_folder

    return str(save_model_folder(build_model(), build_tokenizer(), folder))


def actor_scaling(out: Path, model: str, repeats: int, counts=(1, 2, 4)) -> List[Dict[str, object]]:
    from actors.rollout_actor import RolloutActor
    from cluster.contract.config import QueueConfig
    from cluster.loop.launch import stop_rollouts
    from cluster.queue.actor import ReplayQueueActor

    rates: Dict[int, List[float]] = {}
    for n in counts:
        config = load_config(None, TINY + [f"rollout.num_workers={n}",
                                           "queue.max_staleness=100000"])
        queue = ReplayQueueActor.remote(QueueConfig(capacity_groups=10**6, durable=False), None)
        actors = [RolloutActor.options(num_cpus=2 / max(counts)).remote(
            config, w, model, str(out / f"scale-{n}"), queue) for w in range(n)]
        ray.get([a.state.remote() for a in actors])
        per = 32  # groups of 2 per actor per round
        ray.get([a.generate.remote(per) for a in actors])  # warm-up
        rates[n] = []
        for _ in range(repeats):
            start = time.perf_counter()
            stats = ray.get([a.generate.remote(per) for a in actors])
            rates[n].append(sum(s.rollouts for s in stats) / (time.perf_counter() - start))
            ray.get(queue.get.remote(10**6, 0))
        stop_rollouts(actors)
        ray.kill(queue)
    base = rates[counts[0]]
    return [{"figure": f"{n} rollout actor(s), 32 x 2 each per round",
             "rollouts_per_s": summary(rates[n]),
             "rollouts_per_s_vs_1_actor": ratio_summary(rates[n], base)} for n in counts]


def multinode(out: Path, model: str, steps: int) -> Dict[str, object]:
    """Run the loop with rollout and learner on different raylets; then on one, to compare."""
    from ray.cluster_utils import Cluster

    from cluster.loop.driver import Driver
    from cluster.loop.launch import start_rollouts, stop_rollouts

    results = {}
    for layout in ("two_nodes", "one_node"):
        # One CPU per node for its actors; the one-node layout gets both on the head.
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 2, "resources": {"learner_node": 1, "rollout_node": 1}
        } if layout == "one_node" else {"num_cpus": 1, "resources": {"learner_node": 1}})
        if layout == "two_nodes":
            cluster.add_node(num_cpus=1, resources={"rollout_node": 1})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        try:
            config = load_config(None, TINY + [f"steps={steps}", "eval_every=0",
                                               "cluster.rollout_resource=rollout_node",
                                               "cluster.learner_resource=learner_node"])
            actors = start_rollouts(config, model, out / f"engines-{layout}")
            run_dir = out / f"run-{layout}"
            nodes: Dict[str, set] = {}
            live: Dict[str, Driver] = {}

            def record_nodes(row):  # while the run's learner is up
                if row["kind"] == "step" and not nodes:
                    nodes["rollout"] = set(ray.get([a.node_id.remote() for a in actors]))
                    nodes["learner"] = set(ray.get([r.node_id.remote()
                                                    for r in live["driver"].learner.ranks]))

            live["driver"] = Driver(config, run_dir, model, actors, progress=record_nodes)
            summary_ = live["driver"].run()
            rows = read_rows(run_dir / "metrics.jsonl", "step")
            results[layout] = {
                "steps": summary_.steps,
                "rollout_nodes": sorted(nodes["rollout"]), "learner_nodes": sorted(nodes["learner"]),
                "sync_s": [r["sync_s"] for r in rows],
                "probe_max_abs_diff": max(r["probe_max_abs_diff"] for r in rows),
            }
            stop_rollouts(actors)
        finally:
            ray.shutdown()
            cluster.shutdown()
    two, one = results["two_nodes"], results["one_node"]
    return {
        "figure": f"rollout and learner on separate raylets, {steps} steps",
        "rollout_nodes": two["rollout_nodes"], "learner_nodes": two["learner_nodes"],
        "separate_nodes": not set(two["rollout_nodes"]) & set(two["learner_nodes"]),
        "steps_completed": two["steps"],
        "probe_max_abs_diff": two["probe_max_abs_diff"],
        "sync_s": summary(two["sync_s"]),
        "sync_s_vs_one_node": ratio_summary(two["sync_s"], one["sync_s"]),
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--multinode-only", action="store_true", help="only the two-node run")
    args = p.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    out = scratch_dir("duet-bench-scaling-")
    model = tiny_model(out / "model")
    rows: List[Dict[str, object]] = []
    if not args.multinode_only:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        rows += actor_scaling(out, model, max(2, args.repeats // 2),
                              counts=(1, 2) if args.quick else (1, 2, 4))
        ray.shutdown()
    rows.append(multinode(out, model, 3 if args.quick else 6))
    emit({"benchmark": "scaling", "machine": machine(), "rows": rows,
          "note": "2 cores: 2 actors is the most that can run in parallel here; 4 share them. "
                  "Nodes are raylets on this one machine (ray.cluster_utils.Cluster)."},
         args.json)


if __name__ == "__main__":
    main()
