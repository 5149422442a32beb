"""Evaluation estimators from per-prompt counts: mean@k, unbiased pass@k, maj@k, greedy.

Every figure is a function of the per-prompt rows an evaluation writes
(``evals/step-<N>/<set>.jsonl``: ``{prompt_id, n, correct, ...}``), so a reader can recompute
it. ``pass@k`` is Chen et al. (2021)'s unbiased estimator, ``1 - C(n-c, k) / C(n, k)`` per
prompt with ``n`` samples of which ``c`` are correct, averaged over prompts; not the max
over ``k`` samples (OpenRLHF's ``pass{n}``) nor a bootstrap with replacement (verl's
``best@k``). An errored or timed-out reward counts as wrong (and is counted in ``errors``).
"""

from __future__ import annotations

from collections import Counter
from typing import Dict, List, Mapping, Optional, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of ``k`` samples drawn without replacement from ``n``
    (``c`` correct) is correct.

    Raises:
        ValueError: ``k > n`` (the estimator needs at least k samples), or counts out of range.
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass@k: correct={c} must be within 0..n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs at least {k} samples per prompt; got n={n}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=0}^{k-1} (n-c-i) / (n-i), as a product for stability.
    miss = 1.0
    for i in range(k):
        miss *= (n - c - i) / (n - i)
    return 1.0 - miss


def ks_of(k: int) -> List[int]:
    """pass@ reported at 1, 2, 4, ... up to k, and at k itself."""
    out, j = [], 1
    while j < k:
        out.append(j)
        j *= 2
    return out + [k]


def majority_correct(answers: Sequence[str], correct: Sequence[bool]) -> bool:
    """maj@k: the most frequent answer (first seen wins a tie) is a correct one."""
    if not answers:
        return False
    counts = Counter(answers)
    top = max(counts.values())
    winner = next(a for a in answers if counts[a] == top)
    return any(ok for a, ok in zip(answers, correct) if a == winner)


def summarize(rows: Sequence[Mapping[str, object]], k: int) -> Dict[str, object]:
    """A set's figures from its per-prompt rows (``n``, ``correct``, optionally ``greedy``,
    ``majority``, ``errors``)."""
    if not rows:
        return {"n": 0, "k": k, "samples": 0, "mean_at_k": float("nan"),
                "pass_at_k": float("nan"), "pass_at": {}, "maj_at_k": None,
                "accuracy": None, "errors": 0}
    samples = sum(int(r["n"]) for r in rows)
    pass_at = {str(j): _mean([pass_at_k(int(r["n"]), int(r["correct"]), j) for r in rows])
               for j in ks_of(k)}
    return {
        "n": len(rows), "k": k, "samples": samples,
        "mean_at_k": sum(int(r["correct"]) for r in rows) / samples,
        "pass_at_k": pass_at[str(k)],
        "pass_at": pass_at,
        "maj_at_k": _mean_of(rows, "majority"),
        "accuracy": _mean_of(rows, "greedy"),
        "errors": sum(int(r.get("errors", 0) or 0) for r in rows),
    }


def average(sets: Mapping[str, Mapping[str, object]]) -> Dict[str, Optional[float]]:
    """The unweighted mean over sets (the paper's "average" column), per figure."""
    out: Dict[str, Optional[float]] = {}
    for key in ("mean_at_k", "pass_at_k", "maj_at_k", "accuracy"):
        values = [float(s[key]) for s in sets.values() if s.get(key) is not None]
        out[key] = _mean(values) if values else None
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _mean_of(rows, key) -> Optional[float]:
    values = [float(bool(r[key])) for r in rows if r.get(key) is not None]
    return _mean(values) if values else None
