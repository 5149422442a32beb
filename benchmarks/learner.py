"""Learner throughput against a raw DeepSpeed loop, and peak memory of ZeRO-2 vs ZeRO-3.

Run: ``python -m benchmarks.learner --json``

In one Ray session, the same learner ranks time two things on the same batches, interleaved:

- ``duet``: ``LearnerRank.train_step`` (group sharding, token-budget micro-batches,
  advantages, the clipped GRPO loss, one optimizer step);
- ``raw``: the plainest DeepSpeed loop over the same rows and micro-batches (forward,
  log-probs of the completion tokens, mean, backward, step).

``tokens_per_s_vs_raw`` is duet's completion tokens per second over the raw loop's (goal
>= 0.9). Peak resident memory per rank is read from the rank processes (``ru_maxrss``) for a
~100M-parameter Qwen2-shaped model under ZeRO-2 and ZeRO-3 with 2 ranks on gloo.
"""

from __future__ import annotations

import resource
import tempfile
from typing import Dict, List

import ray

from benchmarks.common import emit, machine, parser, ratio_summary, summary
from benchmarks.learner_loops import duet_step, make_batch, raw_step
from cluster.contract.config import load_config
from cluster.policy.embedded import TinyModelSpec, build_model, build_tokenizer, save_model_folder
from learner.rank import LearnerRank

MODEL_100M = TinyModelSpec(hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=4,
                           intermediate_size=2816, max_position=512)


@ray.remote(num_cpus=1)
class BenchRank(LearnerRank):
    """A learner rank that can also run the raw loop and report its peak memory."""

    def raw(self, batch) -> Dict[str, float]:
        return raw_step(self, batch)

    def duet(self, batch) -> Dict[str, float]:
        return duet_step(self, batch)

    def peak_rss_mib(self) -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def start_ranks(config, model_path: str) -> List:
    world = config.learner.num_ranks
    ranks = [BenchRank.remote(config, r, world) for r in range(world)]
    master = ray.get(ranks[0].rendezvous.remote())
    ray.get([r.start.remote(model_path, master) for r in ranks])
    return ranks


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    tmp = tempfile.mkdtemp(prefix="duet-bench-learner-")
    results: Dict[str, object] = {"benchmark": "learner", "machine": machine(), "rows": []}

    # Throughput: the embedded tiny model, 2 ranks, ZeRO-2, batches of 64 rollouts.
    tiny = save_model_folder(build_model(), build_tokenizer(), f"{tmp}/tiny")
    config = load_config(None, ["learner.num_ranks=2", "learner.zero_stage=2",
                                "learner.micro_batch_tokens=2048", "rollout.max_new_tokens=64",
                                "model.max_model_len=256"])
    ranks = start_ranks(config, str(tiny))
    batches = [make_batch(8, 8, 32, 64, 18, seed) for seed in range(args.repeats + 1)]
    ray.get([r.duet.remote(batches[0]) for r in ranks])  # warm-up
    ray.get([r.raw.remote(batches[0]) for r in ranks])
    duet_s, raw_s, tokens = [], [], 0.0
    for batch in batches[1:]:
        d = ray.get([r.duet.remote(batch) for r in ranks])
        w = ray.get([r.raw.remote(batch) for r in ranks])
        duet_s.append(max(x["seconds"] for x in d))
        raw_s.append(max(x["seconds"] for x in w))
        tokens = sum(x["tokens"] for x in d)
    for r in ranks:
        ray.kill(r)
    results["rows"].append({
        "figure": "tiny model, 2 ranks, ZeRO-2, 64 rollouts x 64 tokens",
        "duet_tokens_per_s": summary([tokens / s for s in duet_s]),
        "raw_tokens_per_s": summary([tokens / s for s in raw_s]),
        "tokens_per_s_vs_raw": ratio_summary(raw_s, duet_s),
    })

    # Memory: a ~100M-parameter model under ZeRO-2 and ZeRO-3.
    if not args.quick:
        big = save_model_folder(build_model(MODEL_100M), build_tokenizer(), f"{tmp}/m100")
        params = sum(p.numel() for p in build_model(MODEL_100M).parameters())
        batch = make_batch(4, 2, 32, 32, 18, 99)
        for stage in (2, 3):
            cfg = load_config(None, ["learner.num_ranks=2", f"learner.zero_stage={stage}",
                                     "learner.micro_batch_tokens=1024",
                                     "rollout.max_new_tokens=32", "model.max_model_len=128"])
            ranks = start_ranks(cfg, str(big))
            times = []
            for _ in range(2):
                times.append(max(x["seconds"] for x in ray.get([r.duet.remote(batch) for r in ranks])))
            peaks = ray.get([r.peak_rss_mib.remote() for r in ranks])
            for r in ranks:
                ray.kill(r)
            results["rows"].append({
                "figure": f"~{params / 1e6:.0f}M-parameter model, 2 ranks, ZeRO-{stage}",
                "zero_stage": stage,
                "peak_rss_mib_per_rank": peaks,
                "step_seconds": summary(times),
            })
    ray.shutdown()
    emit(results, args.json)


if __name__ == "__main__":
    main()
