"""Evaluating a policy on every evaluation set, split across all engines.

Each set's prompts are dealt to the engines in turn (prompt i to engine i mod E); the
per-prompt rows come back, are written to ``<out_dir>/<set>.jsonl`` (one row per prompt:
``{prompt_id, n, correct, greedy, majority, errors}``, atomically) and summarised by
``cluster.contract.estimators``, so every figure can be recomputed from the files. The
driver's evaluations (``evals/step-<N>/``), ``duet eval`` and ``duet compare``'s base row all
go through ``evaluate_sets``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List, Optional

import ray

from cluster.contract.estimators import average, summarize
from cluster.contract.files import atomic_write_json, atomic_write_text


class StaleEvaluation(RuntimeError):
    """An engine answered with other weights than the version being evaluated."""

    def __init__(self, versions: List[int]) -> None:
        super().__init__(f"engines held policy versions {versions}")
        self.versions = versions


def evaluate_sets(actors: list, out_dir: Optional[Path], version: Optional[int] = None,
                  k: Optional[int] = None) -> Dict[str, object]:
    """``{"sets": {name: summary}, "average": {...}, "seconds"}`` of the engines' weights.

    ``version``: the policy version every engine must hold (raises ``StaleEvaluation``
    otherwise, so the caller can resync and retry). ``k`` overrides every set's k.
    """
    start = time.perf_counter()
    sizes = ray.get(actors[0].eval_set_sizes.remote())
    shards = len(actors)
    sets: Dict[str, Dict[str, object]] = {}
    for name, size in sizes.items():
        answers = ray.get([a.evaluate.remote(name, i, shards, k) for i, a in enumerate(actors)])
        errors = [a["error"] for a in answers if a.get("error")]
        if errors:
            raise StaleEvaluation([a["policy_version"] for a in answers])
        held = sorted({a["policy_version"] for a in answers})
        if version is not None and held != [version]:
            raise StaleEvaluation(held)
        rows = sorted((r for a in answers for r in a["rows"]), key=lambda r: r["index"])
        if len(rows) != size:
            raise RuntimeError(f"evaluation set {name}: {len(rows)} rows for {size} prompts")
        set_k = rows[0]["n"] if rows else (k or 0)
        sets[name] = summarize(rows, set_k)
        if out_dir is not None:
            write_rows(Path(out_dir) / f"{name}.jsonl", rows)
    return {"sets": sets, "average": average(sets), "seconds": time.perf_counter() - start}


def write_rows(path: Path, rows: List[Dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(
        json.dumps({k: v for k, v in r.items() if k != "index"}) + "\n" for r in rows))


def read_rows(path: Path) -> List[Dict[str, object]]:
    """The per-prompt rows of one set's evaluation file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def eval_json(result: Dict[str, object]) -> Dict[str, object]:
    """``duet eval``'s ``eval.json``: per set mean@k, pass@k (at k), k, n, greedy accuracy."""
    keep = ("mean_at_k", "pass_at_k", "pass_at", "maj_at_k", "k", "n", "accuracy", "errors")
    return {"sets": {name: {key: s[key] for key in keep}
                     for name, s in result["sets"].items()},
            "average": result["average"]}


def write_eval_json(out_dir: Path, result: Dict[str, object]) -> Path:
    path = Path(out_dir) / "eval.json"
    atomic_write_json(path, eval_json(result), indent=1)
    return path
