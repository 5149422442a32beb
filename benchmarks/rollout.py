"""Rollout pipeline against raw ``LLM.generate``, and weight sync against a memory copy.

Run: ``python -m benchmarks.rollout --json``

Throughput: one engine inside one Ray actor times, interleaved (alternating which goes first)
on the same prompts, model and
sampling settings, (a) ``RolloutWorker.generate`` — sampling, reward pool, Arrow batch, put
on a ``ReplayQueueActor`` — and (b) the raw ``llm.generate`` call alone. Reported as
completion tokens/s and ``tokens_per_s_vs_raw`` (goal >= 0.9), for G=2 and G=16.

Weight sync: publish (bucket + digest + probe) is timed on the sender; the receiving actor's
transfer + in-place load + probe verification is timed against a plain in-memory copy of the
same bytes in the same process (``sync_gb_per_s_vs_memcpy``, goal >= 0.5), for the embedded
tiny model and a ~100M-parameter model of the same architecture.
"""

from __future__ import annotations

import os
import time
from typing import Dict, List

import numpy as np
import ray

from benchmarks.common import emit, machine, parser, ratio_summary, scratch_dir, summary
from cluster.contract.config import load_config
from cluster.contract.weights import as_payload, build_manifest, pack_buckets
from cluster.policy.embedded import TinyModelSpec, build_model, build_tokenizer, save_model_folder

MODEL_100M = TinyModelSpec(hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=4,
                           intermediate_size=2816, max_position=512)


def bench_actor_class():
    from actors.rollout_actor import RolloutActorBase

    class BenchRollout(RolloutActorBase):
        """A rollout worker that can also time the raw engine and a memory copy."""

        def raw(self, positions: List[int], group_size: int) -> Dict[str, float]:
            prompts = [self.source.train(p) for p in positions]
            seeds = [(self.config.seed * 1_000_003 + p) % 2**31 for p in positions]
            start = time.perf_counter()
            _, outputs = self.sample(prompts, seeds, group_size)
            seconds = time.perf_counter() - start
            tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
            return {"tokens": float(tokens), "seconds": seconds}

        def pipeline(self, count: int, group_size: int) -> Dict[str, float]:
            start = time.perf_counter()
            stats = self.generate(count, None, group_size)
            return {"tokens": float(stats.completion_tokens),
                    "seconds": time.perf_counter() - start}

        def memcpy(self, refs) -> float:
            start = time.perf_counter()
            for ref in refs:
                data = ray.get(ref)
                np.frombuffer(data, dtype=np.uint8).copy()
            return time.perf_counter() - start

    return ray.remote(num_cpus=1)(BenchRollout)


def throughput(actor, config, repeats: int) -> List[Dict[str, object]]:
    rows = []
    for group_size in (2, 16):
        count = 64 // group_size
        ray.get(actor.pipeline.remote(count, group_size))  # warm-up
        pipe, raw, tokens = [], [], []
        for i in range(repeats):
            cursor = ray.get(actor.state.remote())["cursor"]
            positions = list(range(cursor, cursor + count))
            # Alternate which runs first: the second run finds the prompts in the prefix cache.
            if i % 2:
                r = ray.get(actor.raw.remote(positions, group_size))
                p = ray.get(actor.pipeline.remote(count, group_size))
            else:
                p = ray.get(actor.pipeline.remote(count, group_size))
                r = ray.get(actor.raw.remote(positions, group_size))
            pipe.append(p["seconds"])
            raw.append(r["seconds"])
            tokens.append((p["tokens"], r["tokens"]))
        rows.append({
            "figure": f"rollout G={group_size}, {count} prompts x {group_size}",
            "pipeline_tokens_per_s": summary([t[0] / s for t, s in zip(tokens, pipe)]),
            "raw_tokens_per_s": summary([t[1] / s for t, s in zip(tokens, raw)]),
            "tokens_per_s_vs_raw": summary([(t[0] / p) / (t[1] / r)
                                            for t, p, r in zip(tokens, pipe, raw)]),
        })
    return rows


def weight_sync(actor, spec, label: str, repeats: int) -> Dict[str, object]:
    model = build_model(spec, seed=1).eval()
    sync, publish, copy = [], [], []
    phases: Dict[str, List[float]] = {"transfer": [], "load": [], "verify": []}
    total = 0
    for version in range(repeats + 1):  # version 0 warms up (the probe's first run compiles)
        start = time.perf_counter()
        buckets = list(pack_buckets(model.state_dict().items()))
        manifest = build_manifest(version + 1, buckets, model, model.config.vocab_size)
        refs = [ray.put(as_payload(b)) for b, _ in buckets]
        seconds = time.perf_counter() - start
        total = manifest.total_bytes
        start = time.perf_counter()
        timings = ray.get(actor.update_weights.remote(manifest, refs))
        if version == 0:
            continue
        sync.append(time.perf_counter() - start)
        publish.append(seconds)
        for phase in phases:
            phases[phase].append(timings[phase])
        copy.append(ray.get(actor.memcpy.remote(refs)))
    gb = total / 1e9
    return {
        "figure": f"weight sync, {label} ({gb * 1000:.0f} MB)",
        "publish_seconds": summary(publish),
        "sync_seconds": summary(sync),
        **{f"sync_{phase}_seconds": summary(v) for phase, v in phases.items()},
        "sync_gb_per_s": summary([gb / s for s in sync]),
        "memcpy_gb_per_s": summary([gb / s for s in copy]),
        "sync_gb_per_s_vs_memcpy": ratio_summary(copy, sync),
    }


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    from cluster.contract.config import QueueConfig
    from cluster.queue.actor import ReplayQueueActor

    tmp = str(scratch_dir("duet-bench-rollout-"))
    Bench = bench_actor_class()
    rows: List[Dict[str, object]] = []
    specs = [(TinyModelSpec(), "tiny model")] + ([] if args.quick else [(MODEL_100M, "~100M")])
    for spec, label in specs:
        path = save_model_folder(build_model(spec), build_tokenizer(), f"{tmp}/{label[:4]}")
        config = load_config(None, ["rollout.max_new_tokens=32", "model.max_model_len=128",
                                    "queue.max_staleness=100000"])
        queue = ReplayQueueActor.remote(QueueConfig(capacity_groups=10**6, durable=False), None)
        actor = Bench.remote(config, 0, str(path), f"{tmp}/state-{label[:4]}", queue)
        ray.get(actor.state.remote())
        if spec == TinyModelSpec():
            rows += throughput(actor, config, args.repeats)
        rows.append(weight_sync(actor, spec, label, max(3, args.repeats // 2)))
        ray.kill(actor)
        ray.kill(queue)
    ray.shutdown()
    emit({"benchmark": "rollout", "machine": machine(), "rows": rows}, args.json)


if __name__ == "__main__":
    main()
