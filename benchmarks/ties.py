"""The learner's zero-advantage skip: one step computing every row against one skipping the
tied groups' rows, on the same batch from the same weights.

Run: ``python -m benchmarks.ties [--json] [--repeats N] [--quick]``

The ~100M benchmark model (``benchmarks.rollout.MODEL_100M``; ``--quick``: the tiny model)
trains one rank in this process (DeepSpeed ZeRO-2 on gloo, every core) on G = 2 batches of
64 rows, each a 64-token prompt and exactly 128 completion tokens, at the paper's learning
rate 1e-6. For each tie fraction (0.5, 0.75: that share of the 32 groups have equal rewards)
two ranks start from the same saved weights, ``learner.skip_zero_advantage`` off and auto,
and take the same batches in turn, one step each, interleaved (off, skip, off, skip...); the
first pair of steps is untimed warm-up.

- ``speedup``: the compute-everything step's seconds over the skipping step's, per pair
  (median, min, max) — the whole ``train_step``: advantages, forwards, backwards, gradient
  clipping and the optimizer step. The ideal is 1 / (1 - tie fraction): 2x and 4x.
- ``max_rel_param_diff``: after the first step (both ranks from identical weights), the
  largest per-tensor ``||theta_skip - theta_off|| / ||theta_off||``. The model's biases are
  drawn like its weights (``draw_biases``): a fresh model's are zero, and a key projection's
  bias has a gradient of exactly zero (softmax ignores it), which Adam turns into a move of
  up to lr from rounding alone in either path, so against a zero bias the ratio would be
  ~1e-6 whatever the skip does; after every further step
  as ``max_rel_param_diff_last`` (the two ranks then start from their own weights).
"""

from __future__ import annotations

import gc
import sys
import time
from typing import Dict, List

import torch

from benchmarks.common import emit, machine, parser, scratch_dir, summary
from benchmarks.rollout import MODEL_100M
from cluster.contract.config import load_config
from cluster.contract.schema import Group, build_batch
from cluster.policy.embedded import (
    TINY_MODEL,
    build_model,
    build_tokenizer,
    draw_biases,
    save_model_folder,
)
from learner.rank import LearnerRank

GROUPS, GROUP_SIZE, PROMPT, COMPLETION = 32, 2, 64, 128
TIE_FRACTIONS = (0.5, 0.75)
LR = 1e-6
WARMUP = 1


def tie_batch(tie_fraction: float, vocab: int, seed: int, groups: int = GROUPS,
              completion: int = COMPLETION):
    """``groups`` random G = 2 groups, the first ``tie_fraction`` of them tied (rewards 1, 1
    or 0, 0 in turn), the rest mixed (1, 0); rows of exactly ``completion`` tokens."""
    gen = torch.Generator().manual_seed(seed)
    tied = round(groups * tie_fraction)
    out = []
    for p in range(groups):
        rewards = [float(p % 2)] * 2 if p < tied else [1.0, 0.0]
        comps = [torch.randint(3, vocab, (completion,), generator=gen).tolist()
                 for _ in range(GROUP_SIZE)]
        out.append(Group(f"t{seed}-{p}", f"p{p}",
                         torch.randint(3, vocab, (PROMPT,), generator=gen).tolist(), comps,
                         [[-1.0] * completion for _ in comps], rewards))
    return build_batch(out)


def make_rank(model_path: str, mode: str, completion: int) -> LearnerRank:
    config = load_config(None, [
        "learner.num_ranks=1", "learner.zero_stage=2", f"learner.lr={LR}",
        f"learner.skip_zero_advantage={mode}", f"rollout.max_new_tokens={completion}",
        f"model.max_model_len={PROMPT + completion}"])
    rank = LearnerRank(config, 0, 1)
    rank.start(model_path)
    return rank


def max_rel_diff(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).norm() / b[k].norm().clamp(min=1e-30)) for k in b)


def measure(model_path: str, tie_fraction: float, repeats: int, vocab: int,
            completion: int) -> Dict[str, object]:
    ranks = {mode: make_rank(model_path, mode, completion) for mode in ("off", "auto")}
    seconds: Dict[str, List[float]] = {"off": [], "auto": []}
    first_diff = last_diff = 0.0
    computed = received = 0.0
    for i in range(WARMUP + repeats):
        batch = tie_batch(tie_fraction, vocab, seed=i, completion=completion)
        took: Dict[str, float] = {}
        for mode, rank in ranks.items():
            start = time.perf_counter()
            metrics = rank.train_step(batch)
            took[mode] = time.perf_counter() - start
            if i >= WARMUP:
                seconds[mode].append(took[mode])
            if mode == "auto":
                computed, received = metrics["rows_computed"], metrics["rows_received"]
        last_diff = max_rel_diff(ranks["auto"].weights(), ranks["off"].weights())
        if i == 0:
            first_diff = last_diff
        print(f"ties {tie_fraction}: step {i}{' (warm-up)' if i < WARMUP else ''}: off "
              f"{took['off']:.2f} s, skip {took['auto']:.2f} s, rel diff {last_diff:.2g}",
              file=sys.stderr, flush=True)
    ranks.clear()
    gc.collect()  # two ~100M engines and their optimizer state, before the next pair
    return {
        "figure": f"tie fraction {tie_fraction}: {GROUPS * GROUP_SIZE} rows x {completion} "
                  "tokens, G = 2, one learner step",
        "speedup": summary([o / s for o, s in zip(seconds["off"], seconds["auto"])]),
        "ideal_speedup": 1 / (1 - tie_fraction),
        "off_seconds": summary(seconds["off"]),
        "skip_seconds": summary(seconds["auto"]),
        "rows_computed": computed,
        "rows_received": received,
        "max_rel_param_diff": first_diff,
        "max_rel_param_diff_last": last_diff,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    tmp = scratch_dir("duet-bench-ties-")
    spec = TINY_MODEL if args.quick else MODEL_100M
    model = draw_biases(build_model(spec))  # a trained model's biases are not zero
    params = sum(p.numel() for p in model.parameters())
    path = str(save_model_folder(model, build_tokenizer(), tmp / "model"))
    del model
    vocab = build_tokenizer().vocab_size
    completion = 16 if args.quick else COMPLETION
    repeats = args.repeats
    rows = [measure(path, f, repeats, vocab, completion) for f in TIE_FRACTIONS]
    results: Dict[str, object] = {
        "benchmark": "ties", "machine": machine(),
        "model_parameters": params, "rows": rows,
        **{str(f): {"speedup": r["speedup"]["median"],
                    "max_rel_param_diff": r["max_rel_param_diff"]}
           for f, r in zip(TIE_FRACTIONS, rows)},
    }
    emit(results, args.json)


if __name__ == "__main__":
    main()
