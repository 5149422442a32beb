"""Where a step's time goes, function by function: the three phases of a step under cProfile.

Run: ``python -m benchmarks.profile --json`` (``--repeats N``: profiled steps, default 5)

On the embedded tiny model, in this one process (no Ray: what is measured is the phases'
own work, not the transport between actors), with fixed-length completions as in
``benchmarks.floor``:

- ``generate``: ``RolloutWorker.generate`` for one step (4 prompts x 16: sampling with
  behaviour log-probs, decoding and scoring, the Arrow batch);
- ``train``: ``LearnerRank.train_step`` on that batch (DeepSpeed ZeRO-2 on gloo, one rank);
- ``sync``: the weight sync's work on both sides: the learner's manifest (its probe, with
  the last probe's tokens as its guess, as a learner rank keeps them), the
  bucket packed and hashed, the engine's digest check, vLLM's layer-wise reload, the
  probe through the engine.

Each phase reports its median seconds (under the profiler, which slows Python code more
than native kernels), its own time by package, and the functions with the most own time
(cProfile ``tottime``) over the profiled steps, as shares of the phase.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

from benchmarks.common import emit, machine, parser, scratch_dir
from cluster.contract.config import load_config

TOP = 8


def top_functions(profile: cProfile.Profile, total: float) -> List[Dict[str, object]]:
    """The ``TOP`` functions by own time: where, how many calls, seconds, share of ``total``."""
    stats = pstats.Stats(profile).stats  # {(file, line, name): (cc, nc, tottime, cumtime, _)}
    rows = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:TOP]
    out = []
    for (path, line, name), (_, calls, own, _, _) in rows:
        where = f"{Path(path).name}:{line}({name})" if line else name
        out.append({"function": where, "calls": calls, "own_s": own,
                    "share": own / total if total else 0.0})
    return out


PACKAGES = (("vllm/v1/core", "vllm scheduler and KV cache"), ("vllm/model_executor", "vllm model"),
            ("vllm", "vllm other"), ("deepspeed", "deepspeed"), ("transformers", "transformers"),
            ("torch", "torch"), ("/actors/", "duet"), ("/learner/", "duet"), ("/cluster/", "duet"))


def by_package(profile: cProfile.Profile, total: float) -> Dict[str, float]:
    """Own time summed by where the code lives, as a share of ``total``; C functions
    (``{built-in ...}``: torch's kernels, most of them) count as 'native'."""
    out: Dict[str, float] = {}
    for (path, _, _), (_, _, own, _, _) in pstats.Stats(profile).stats.items():
        where = next((label for key, label in PACKAGES if key in path),
                     "native" if path == "~" else "other python")
        out[where] = out.get(where, 0.0) + own / total
    return dict(sorted(out.items(), key=lambda kv: kv[1], reverse=True))


def profiled(phase: Callable[[], object], repeats: int) -> Dict[str, object]:
    """``phase`` once untimed, then ``repeats`` times under one profiler."""
    phase()
    profile, seconds = cProfile.Profile(), []
    for _ in range(repeats):
        start = time.perf_counter()
        profile.enable()
        phase()
        profile.disable()
        seconds.append(time.perf_counter() - start)
    return {"median_s": statistics.median(seconds),
            "by_package": by_package(profile, sum(seconds)),
            "top": top_functions(profile, sum(seconds))}


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from actors.rollout import RolloutWorker
    from cluster.contract.weights import (
        BUCKET_BYTES,
        PROBE_PREFIX,
        digest,
        pack_buckets,
        start_manifest,
    )
    from cluster.policy.embedded import build_model, build_tokenizer, save_model_folder
    from learner.publish import LearnerWeights
    from learner.rank import LearnerRank

    tmp = scratch_dir("duet-bench-profile-")
    model = str(save_model_folder(build_model(), build_tokenizer(), tmp / "tiny"))
    config = load_config(None, [
        "model.max_model_len=64", "rollout.max_new_tokens=32", "rollout.min_new_tokens=32",
        "algo.prompts_per_step=4", "algo.group_size=16", "learner.num_ranks=1",
        "learner.micro_batch_tokens=4096", "learner.lr=1e-5", "rollout.tie_handling=keep"])
    batches: List[object] = []
    worker = RolloutWorker(config, 0, model, str(tmp / "state"), sink=batches.append)
    rank = LearnerRank(config, 0, 1)
    rank.start(model)
    version = [0]
    guess: List[tuple] = [()]  # the last probe's greedy tokens, as a learner rank keeps them

    def generate() -> None:
        batches.clear()
        worker.generate(config.algo.prompts_per_step)

    def train() -> None:
        rank.train_step(batches[-1])

    def sync() -> None:
        version[0] += 1
        source = LearnerWeights(rank.engine.module, False)
        manifest = start_manifest(version[0], source.names(), rank.engine.module,
                                  rank.vocab_size, guess=guess[0])
        guess[0] = manifest.probe_token_ids[PROBE_PREFIX:]
        worker.start_weight_update(manifest)
        for index, (data, _) in enumerate(pack_buckets(iter(source), BUCKET_BYTES)):
            worker.load_bucket(index, digest(data), data)
        worker.finish_weight_update()

    rows = []
    for name, phase in (("generate", generate), ("train", train), ("sync", sync)):
        rows.append({"figure": f"tiny model, {name}", "phase": name,
                     **profiled(phase, max(1, args.repeats))})
    worker.close()
    if not args.json:
        for row in rows:
            print(f"{row['phase']}: {row['median_s']:.4f} s a step; "
                  + ", ".join(f"{k} {100 * v:.0f}%" for k, v in row["by_package"].items()))
            for f in row["top"]:
                print(f"  {100 * f['share']:5.1f}%  {f['own_s']:.4f} s  {f['calls']:>6} calls  "
                      f"{f['function']}")
        return
    emit({"benchmark": "profile", "machine": machine(), "rows": rows,
          "note": "cProfile own time (tottime) per function, summed over the profiled steps, "
                  "as a share of the phase's time; tiny model, one process, no Ray"}, True)


if __name__ == "__main__":
    main()
