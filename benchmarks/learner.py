"""Learner throughput against a plain training process, and peak memory of ZeRO-2 vs ZeRO-3.

Run: ``python -m benchmarks.learner --json`` (``--quick``: the tiny model only, no memory rows)

Throughput, for the embedded tiny model (64 rollouts x 64 tokens) and a ~100M-parameter one
of the same architecture (16 rollouts x 128 tokens), on the same batches, taking turns, each
side's first ``WARMUP_BATCHES`` untimed:

- ``duet``: ``LearnerRank.train_step`` in a real learner actor (one rank, DeepSpeed ZeRO-2
  as configured, which one CPU rank runs as ZeRO-1 without gradient hooks, on gloo), with
  the threads duet gives it (``learner.threads``, default: the node's cores in sync mode):
  group sharding, token-budget micro-batches, advantages, the clipped GRPO
  loss, gradient clipping, one optimizer step;
- ``plain``: what a plain user process runs — a separate process, not started by Ray, with
  torch's default threads: the same rows in the same micro-batches, forward, log-probs of
  the completion tokens times an advantage, backward, gradient clipping, one AdamW step.

``tokens_per_s_vs_plain`` is duet's completion tokens per second over the plain process's
(goal >= 0.9). Peak resident memory per rank is read from the rank processes
(``ru_maxrss``) for the ~100M model under ZeRO-2 and ZeRO-3 with 2 ranks on gloo, each with
the freed host memory kept and returned (``learner.keep_freed_memory``).
"""

from __future__ import annotations

import multiprocessing
import resource
import sys
from typing import Dict, List

import ray

from benchmarks.common import emit, machine, parser, ratio_summary, scratch_dir, summary
from benchmarks.learner_loops import duet_step, make_batch
from benchmarks.rollout import MODEL_100M
from cluster.contract.config import load_config
from cluster.policy.embedded import TINY_MODEL, build_model, build_tokenizer, save_model_folder
from learner.rank import LearnerRank

MICRO_BATCH_TOKENS = 4096
# Untimed batches on each side first: a fresh process faults in its memory over its first
# steps (``benchmarks.floor`` measured it), which a run of hundreds of steps pays once.
WARMUP_BATCHES = 2
TINY_BATCHES = 20  # timed; a tiny batch takes a fraction of a second, so more of them


@ray.remote(num_cpus=1)
class BenchRank(LearnerRank):
    """A learner rank that reports its own step time and peak memory."""

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


def plain_process(conn, model_path: str, shape: Dict[str, int]) -> None:
    """The plain side, in its own process: answers each batch seed with (seconds, tokens)."""
    import torch
    from transformers import AutoModelForCausalLM

    from benchmarks.learner_loops import plain_step

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    conn.send({"threads": torch.get_num_threads()})
    while True:
        seed = conn.recv()
        if seed is None:
            return
        batch = make_batch(shape["groups"], shape["group_size"], 18, shape["completion"],
                           shape["vocab"], seed)
        conn.send(plain_step(model, optimizer, batch, MICRO_BATCH_TOKENS))


def throughput(name: str, model_path: str, shape: Dict[str, int], repeats: int
               ) -> Dict[str, object]:
    """duet's learner actor and a plain process on the same batches, interleaved."""
    config = load_config(None, [
        "learner.num_ranks=1", "learner.zero_stage=2", "learner.lr=1e-5",
        f"learner.micro_batch_tokens={MICRO_BATCH_TOKENS}",
        f"rollout.max_new_tokens={shape['completion']}",
        f"model.max_model_len={shape['completion'] + 32}"])
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing of Ray's
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=plain_process, args=(theirs, model_path, shape), daemon=True)
    child.start()
    plain_threads = ours.recv()["threads"]
    (rank,) = start_ranks(config, model_path)
    try:
        duet_s, plain_s, tokens = [], [], 0.0
        for seed in range(WARMUP_BATCHES + repeats):
            batch = make_batch(shape["groups"], shape["group_size"], 18, shape["completion"],
                               shape["vocab"], seed)
            d = ray.get(rank.duet.remote(batch))
            ours.send(seed)
            p = ours.recv()
            if seed >= WARMUP_BATCHES:
                duet_s.append(d["seconds"])
                plain_s.append(p["seconds"])
                tokens = d["tokens"]
                assert p["tokens"] == tokens, "both sides must train on the same tokens"
            print(f"learner {name} batch {seed}: duet {d['seconds']:.3f} s, plain "
                  f"{p['seconds']:.3f} s", file=sys.stderr, flush=True)
        duet_threads = ray.get(rank.threads.remote())
    finally:
        ours.send(None)
        child.join(timeout=30)
        ray.kill(rank)
    return {
        "figure": f"{name}, 1 rank, ZeRO-2, {shape['groups'] * shape['group_size']} rollouts "
                  f"x {shape['completion']} tokens",
        "duet_tokens_per_s": summary([tokens / s for s in duet_s]),
        "plain_tokens_per_s": summary([tokens / s for s in plain_s]),
        "tokens_per_s_vs_plain": ratio_summary(plain_s, duet_s),
        "duet_threads": duet_threads,
        "plain_threads": plain_threads,
    }


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    tmp = str(scratch_dir("duet-bench-learner-"))
    results: Dict[str, object] = {"benchmark": "learner", "machine": machine(), "rows": []}
    vocab = build_tokenizer().vocab_size

    tiny = save_model_folder(build_model(TINY_MODEL), build_tokenizer(), f"{tmp}/tiny")
    results["rows"].append(throughput(
        "tiny model", str(tiny),
        {"groups": 4, "group_size": 16, "completion": 64, "vocab": vocab},
        max(args.repeats, TINY_BATCHES)))
    if not args.quick:
        big = save_model_folder(build_model(MODEL_100M), build_tokenizer(), f"{tmp}/m100")
        params = sum(p.numel() for p in build_model(MODEL_100M).parameters())
        results["rows"].append(throughput(
            f"~{params / 1e6:.0f}M-parameter model", str(big),
            {"groups": 2, "group_size": 8, "completion": 128, "vocab": vocab},
            min(args.repeats, 3)))

        # Memory: the ~100M model under ZeRO-2 and ZeRO-3, 2 ranks.
        batch = make_batch(4, 2, 32, 32, vocab, 99)
        # Each stage with the freed host memory kept (the default) and given back, side by
        # side: keeping it trades peak memory for page faults (``learner.host_memory``).
        for stage, keep in ((2, True), (2, False), (3, True), (3, False)):
            cfg = load_config(None, ["learner.num_ranks=2", f"learner.zero_stage={stage}",
                                     "learner.micro_batch_tokens=1024",
                                     f"learner.keep_freed_memory={str(keep).lower()}",
                                     "rollout.max_new_tokens=32", "model.max_model_len=128"])
            ranks = start_ranks(cfg, str(big))
            times = [max(x["seconds"] for x in ray.get([r.duet.remote(batch) for r in ranks]))
                     for _ in range(2)]
            peaks = ray.get([r.peak_rss_mib.remote() for r in ranks])
            for r in ranks:
                ray.kill(r)
            results["rows"].append({
                "figure": f"~{params / 1e6:.0f}M-parameter model, 2 ranks, ZeRO-{stage}, "
                          f"freed memory {'kept' if keep else 'returned'}",
                "zero_stage": stage,
                "keep_freed_memory": keep,
                "peak_rss_mib_per_rank": peaks,
                "step_seconds": summary(times),
            })
    ray.shutdown()
    emit(results, args.json)


if __name__ == "__main__":
    main()
