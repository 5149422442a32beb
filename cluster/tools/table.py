"""The paper's Table 1 for a comparison: a base row and a row per arm, with mean@k and pass@k
per evaluation set, their average over sets, training hours and rollouts.

The base row is ``<run>/base/eval.json`` (the shared starting weights, evaluated once by
``duet compare``); an arm's cells are the final evaluation of each seed's run
(``metrics.jsonl``), summarised as the median with the min–max over seeds beside it.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Dict, List, Optional

from cluster.loop.run_log import read_rows

FIGURES = ("mean_at_k", "pass_at_k")


def _spread(values: List[float]) -> Optional[Dict[str, float]]:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def paper_table(run_dir: Path, runs: Dict[str, Dict[int, Path]]) -> Dict[str, object]:
    """``{"sets", "k", "rows": [{"name", "sets": {set: {mean_at_k, pass_at_k}}, "average",
    "hours", "rollouts", "seeds"}]}``; base cells are numbers, arm cells spreads."""
    rows: List[Dict[str, object]] = []
    names: List[str] = []
    ks: Dict[str, int] = {}
    base_file = Path(run_dir) / "base" / "eval.json"
    if base_file.exists():
        base = json.loads(base_file.read_text())
        for name, s in base["sets"].items():
            names.append(name)
            ks[name] = s["k"]
        rows.append({"name": "base", "seeds": 0, "hours": None, "rollouts": 0,
                     "sets": {n: {f: s.get(f) for f in FIGURES} for n, s in base["sets"].items()},
                     "average": {f: base["average"].get(f) for f in FIGURES}})
    for arm, seeds in runs.items():
        finals, hours, rollouts = [], [], []
        for folder in seeds.values():
            evals = read_rows(folder / "metrics.jsonl", "eval")
            steps = read_rows(folder / "metrics.jsonl", "step")
            if not evals:
                continue
            finals.append(evals[-1])
            hours.append(sum(r.get("step_s", 0) or 0 for r in steps) / 3600)
            rollouts.append(float(steps[-1]["rollouts_total"]) if steps else 0.0)
        sets: Dict[str, Dict[str, object]] = {}
        for final in finals:
            for name, s in (final.get("sets") or {}).items():
                if name not in names:
                    names.append(name)
                ks.setdefault(name, s.get("k"))
        for name in names:
            sets[name] = {f: _spread([(e.get("sets") or {}).get(name, {}).get(f)
                                      for e in finals]) for f in FIGURES}
        rows.append({"name": f"{arm}-GRPO", "seeds": len(finals),
                     "sets": sets,
                     "average": {f: _spread([e.get(f) for e in finals]) for f in FIGURES},
                     "hours": _spread(hours), "rollouts": _spread(rollouts)})
    return {"sets": names, "k": ks, "rows": rows}


def table_markdown(table: Dict[str, object]) -> List[str]:
    """Table 1's layout in Markdown: a column pair (mean@k, pass@k) per set, then the average."""
    names, ks = table["sets"], table["k"]
    head = ["model"] + [f"{n} mean@{ks.get(n)} / pass@{ks.get(n)}" for n in names] + [
        "average mean@k / pass@k", "training hours", "rollouts"]
    lines = ["## Table: base and arms on every evaluation set", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in table["rows"]:
        cells = [row["name"]]
        for name in names:
            figures = row["sets"].get(name, {})
            cells.append(" / ".join(_cell(figures.get(f)) for f in FIGURES))
        cells.append(" / ".join(_cell(row["average"].get(f)) for f in FIGURES))
        cells.append(_cell(row["hours"], ".4f"))
        cells.append(_cell(row["rollouts"], ".0f") if row["name"] != "base" else "—")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Arms: the final evaluation of each seed's run, median (min–max over seeds). "
              "mean@k: the mean reward over k samples per prompt at the evaluation settings; "
              "pass@k: the unbiased estimator of Chen et al. (2021) from the per-prompt counts "
              "in `evals/step-<N>/<set>.jsonl` (`base/<set>.jsonl` for the base row); average: "
              "the unweighted mean over sets. Training hours: the steps' own wall time.", ""]
    return lines


def _cell(value, fmt: str = ".1%") -> str:
    if value is None:
        return "—"
    if isinstance(value, dict):
        mid = f"{value['median']:{fmt}}"
        if value["min"] == value["max"]:
            return mid
        return f"{mid} ({value['min']:{fmt}}–{value['max']:{fmt}})"
    return f"{value:{fmt}}"
