"""Held-out evaluation on a rollout worker's engine: greedy accuracy and mean@k.

Greedy accuracy samples one completion per prompt at temperature 0; mean@k samples ``k`` at
the evaluation settings (the paper: temperature 0.7, top-p 0.8, top-k 20) and averages the
reward. A sample whose reward errored or timed out counts as wrong.
"""

from __future__ import annotations

from typing import Dict, List, Optional


def evaluate(worker, prompts: Optional[List] = None, k: Optional[int] = None) -> Dict[str, float]:
    """``{"accuracy", "mean_at_k", "k", "n", "policy_version"}`` on ``prompts`` (default: the
    held-out set); ``policy_version`` is the version the engine held."""
    prompts = prompts if prompts is not None else worker.source.eval_set()
    if not prompts:
        return {"accuracy": float("nan"), "mean_at_k": float("nan"), "k": 0, "n": 0,
                "policy_version": worker.policy_version}
    k = k or worker.config.rollout.eval_k
    seeds = [(worker.config.seed * 7919 + i) % 2**31 for i in range(len(prompts))]
    result: Dict[str, float] = {"n": len(prompts), "k": k,
                                "policy_version": worker.policy_version}
    for key, mode, n, s in (("accuracy", "greedy", 1, [None] * len(prompts)),
                            ("mean_at_k", "eval", k, seeds)):
        _, outputs = worker.sample(prompts, s, n, mode)
        values, statuses = worker.score(prompts, outputs)
        result[key] = sum(v for v, st in zip(values, statuses) if st == "ok") / len(values)
    return result
