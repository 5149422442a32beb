"""The comparison report: a headline, per-seed tables, ratios and plots, from the runs' logs.

Every number in ``report.md`` and ``report.json`` is derived here from the runs'
``metrics.jsonl`` (``run_numbers``), so a reader (or a test) can recompute it from the raw
log, which is also written beside the report as ``metrics.csv`` / ``metrics.parquet`` with
``arm`` and ``seed`` columns. A ratio is taken per seed (the two arms of one seed share the
prompt order and the starting weights) and summarised as median and min-max over seeds.
"""

from __future__ import annotations

import json
import os
import statistics
from fractions import Fraction
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cluster.loop.run_log import flat_table, read_rows
from cluster.tools import paper
from cluster.tools.table import paper_table, table_markdown

Runs = Dict[str, Dict[int, Path]]  # arm -> seed -> run folder

# report.json "ratios": name -> (run_numbers key, what it is); each is smaller-G / larger-G.
RATIOS = {
    "mean_at_k": ("mean_at_k_end", "final held-out mean@k"),
    "greedy": ("accuracy_end", "final held-out greedy accuracy"),
    "training_time": ("training_seconds", "training time (the steps' own wall time)"),
    "rollouts": ("rollouts", "rollouts generated"),
    "steps": ("steps", "steps taken"),
}


def compare_runs(run_dir: Path) -> Runs:
    """``{arm: {seed: folder}}`` of a compare run (``arm-<G>/seed-<s>/``; an older
    ``arm-<G>/`` without seeds counts as its config's seed)."""
    runs: Runs = {}
    for arm_dir in sorted(Path(run_dir).glob("arm-*")):
        arm = arm_dir.name[len("arm-"):].replace("rs", "+rs")
        seeds = {}
        for folder in sorted(arm_dir.glob("seed-*")):
            if (folder / "metrics.jsonl").exists():
                seeds[int(folder.name[len("seed-"):])] = folder
        if not seeds and (arm_dir / "metrics.jsonl").exists():
            seeds[_seed_of(arm_dir)] = arm_dir
        if seeds:
            runs[arm] = seeds
    return dict(sorted(runs.items(), key=lambda kv: (int(kv[0].split("+")[0]), kv[0])))


def _seed_of(folder: Path) -> int:
    import yaml

    cfg = folder / "config.yaml"
    return int(yaml.safe_load(cfg.read_text()).get("seed", 0)) if cfg.exists() else 0


def run_numbers(folder: Path) -> Dict[str, float]:
    """Headline numbers of one run, from its metrics log only."""
    steps = read_rows(folder / "metrics.jsonl", "step")
    evals = read_rows(folder / "metrics.jsonl", "eval")
    if not evals:
        raise ValueError(f"{folder}: no evaluation rows in metrics.jsonl")
    groups = sum(r.get("groups", 0) or 0 for r in steps)
    informative = sum(r.get("informative_groups", 0) or 0 for r in steps)
    gen_s = sum(r.get("generate_s", 0) or 0 for r in steps)
    tokens = sum(r.get("completion_tokens", 0) or 0 for r in steps)
    received = sum(r.get("tokens_received", 0) or 0 for r in steps)
    computed = sum(r.get("tokens_computed", 0) or 0 for r in steps)
    return {
        "steps": float(len(steps)),
        "mean_at_k_start": evals[0].get("mean_at_k"),
        "mean_at_k_end": evals[-1].get("mean_at_k"),
        "k": evals[0].get("k"),
        "accuracy_start": evals[0]["accuracy"],
        "accuracy_end": evals[-1]["accuracy"],
        "accuracy_best": max(e["accuracy"] for e in evals),
        "rollouts": float(steps[-1]["rollouts_total"]) if steps else 0.0,
        "wall_seconds": float(steps[-1]["wall_s"]) if steps else 0.0,
        "training_seconds": sum(r.get("step_s", 0) or 0 for r in steps),
        "informative_fraction": informative / groups if groups else float("nan"),
        # The share of trained completion tokens the learner computed (zero-advantage rows
        # skipped); runs logged before the skip existed computed every one.
        "computed_fraction": computed / received if received else 1.0,
        "tokens_per_s": tokens / gen_s if gen_s else float("nan"),
        "train_seconds": sum(r.get("learner_seconds", 0) or 0 for r in steps),
        "sync_seconds": sum(r.get("sync_s", 0) or 0 for r in steps),
    }



def spread(values: List[float]) -> Dict[str, float]:
    """Median and min-max of per-seed values."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def pair(arms: List[str]) -> Optional[Tuple[str, str]]:
    """The arms a headline compares: 2 against 16 when both ran, else the smallest group
    size against the largest."""
    plain = [a for a in arms if "+" not in a]
    if "2" in plain and "16" in plain:
        return "2", "16"
    if len(plain) >= 2:
        return plain[0], plain[-1]
    return None


def ratios(numbers: Dict[str, Dict[int, Dict[str, float]]], small: str, large: str
           ) -> Dict[str, Dict[str, object]]:
    """Each ratio small / large per seed both ran, with its spread."""
    seeds = sorted(set(numbers[small]) & set(numbers[large]))
    out: Dict[str, Dict[str, object]] = {}
    for name, (key, _) in RATIOS.items():
        per_seed = {}
        for seed in seeds:
            a, b = numbers[small][seed].get(key), numbers[large][seed].get(key)
            if a is not None and b:
                per_seed[seed] = a / b
        if per_seed:
            out[name] = {**spread(list(per_seed.values())),
                         "per_seed": {str(s): v for s, v in per_seed.items()}}
    return out


def headline(r: Dict[str, Dict[str, object]], small: str, large: str, k: object,
             seeds: int) -> str:
    """The report's first sentence."""
    def ranged(name: str) -> str:
        s = r[name]
        text = f"{s['median']:.1%}"
        return text if seeds < 2 else f"{text} ({s['min']:.1%}–{s['max']:.1%})"

    rollouts = r["rollouts"]["median"]
    frac = Fraction(rollouts).limit_denominator(32)
    used = ("the same number of rollouts" if abs(rollouts - 1) < 1e-9 else
            f"{frac.numerator}/{frac.denominator} of the rollouts"
            if abs(float(frac) - rollouts) < 1e-9 else f"{rollouts:.1%} of the rollouts")
    over = f"median (min–max) over {seeds} seeds" if seeds > 1 else "one seed"
    return (f"{small}-GRPO reached {ranged('mean_at_k')} of {large}-GRPO's accuracy "
            f"(mean@{k}, averaged over the evaluation sets) in {ranged('training_time')} "
            f"of its training time, using {used} "
            f"({over}; the paper: {paper.ACCURACY_RATIO:.1%} in ~{paper.TIME_RATIO:.0%}, "
            "using 1/8 of the rollouts).")


def write_report(run_dir: Path, title: str = "duet: 2-GRPO vs 16-GRPO") -> Path:
    """Write report.md, report.json, report.png and the combined metrics table."""
    run_dir = Path(run_dir)
    runs = compare_runs(run_dir)
    if not runs:
        raise ValueError(f"{run_dir}: no arm-*/seed-*/metrics.jsonl found; is this a "
                         "compare run?")
    numbers = {arm: {seed: run_numbers(f) for seed, f in seeds.items()}
               for arm, seeds in runs.items()}
    seeds = sorted({s for per_arm in numbers.values() for s in per_arm})
    k = next(iter(next(iter(numbers.values())).values())).get("k")
    _write_tables(run_dir, runs)
    _plot(run_dir, runs)
    if len(runs) >= 3:
        _plot_sweep(run_dir, numbers)
    lines = [f"# {title}", ""]
    chosen = pair(list(runs))
    summary: Dict[str, object] = {"seeds": seeds, "budget": _budget(run_dir),
                                  "arms": {}, "ratios": {}}
    if chosen:
        small, large = chosen
        r = ratios(numbers, small, large)
        if {"mean_at_k", "training_time", "rollouts"} <= set(r):
            summary["headline"] = headline(r, small, large, k, len(seeds))
            lines += [f"**{summary['headline']}**", ""]
        summary["ratios"] = r
        summary["pair"] = [small, large]
    note = _config_note(runs)
    if note:
        lines += [note, ""]
    table = paper_table(run_dir, runs)
    summary["table"] = table
    if table["sets"]:
        lines += table_markdown(table)
    lines += _per_seed_table(numbers, k)
    for arm, per_seed in numbers.items():
        summary["arms"][arm] = {
            "runs": {str(s): n for s, n in per_seed.items()},
            **{key: spread([n[key] for n in per_seed.values() if n.get(key) is not None])
               for key in ("mean_at_k_end", "accuracy_end", "training_seconds", "rollouts",
                           "steps", "informative_fraction", "computed_fraction")
               if any(n.get(key) is not None for n in per_seed.values())}}
    if chosen and summary["ratios"]:
        lines += _ratio_table(summary["ratios"], *chosen, k, len(seeds))
    if len(runs) >= 3:
        lines += _sweep_table(summary["arms"], k)
    lines += ["![accuracy against rollouts and training time; informative groups](report.png)",
              ""]
    if len(runs) >= 3:
        lines += ["![final accuracy and training time against the group size](sweep.png)", ""]
    lines += ["Raw metrics: `metrics.csv` / `metrics.parquet` (one row per step and per "
              "evaluation, `arm` and `seed` columns); machine-readable figures: `report.json`.",
              ""]
    path = run_dir / "report.md"
    _atomic_write(path, "\n".join(lines))
    _atomic_write(run_dir / "report.json", json.dumps(summary, indent=1))
    return path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _pct(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.1%}"


def _per_seed_table(numbers: Dict[str, Dict[int, Dict[str, float]]], k) -> List[str]:
    lines = [f"| arm | seed | steps | rollouts | mean@{k} start → end | greedy start → end "
             "(best) | training time (s) | informative groups | learner computed | "
             "completion tokens/s |",
             "|" + " --- |" * 10]
    for arm, per_seed in numbers.items():
        for seed, n in per_seed.items():
            lines.append(
                f"| {arm}-GRPO | {seed} | {n['steps']:.0f} | {n['rollouts']:.0f} | "
                f"{_pct(n['mean_at_k_start'])} → {_pct(n['mean_at_k_end'])} | "
                f"{n['accuracy_start']:.1%} → {n['accuracy_end']:.1%} "
                f"({n['accuracy_best']:.1%}) | {n['training_seconds']:.1f} | "
                f"{n['informative_fraction']:.1%} | {n['computed_fraction']:.0%} | "
                f"{n['tokens_per_s']:.0f} |")
    lines += ["", f"mean@{k}: held-out accuracy averaged over {k} samples per prompt at the "
              "evaluation settings (rollout.eval_temperature / eval_top_p / eval_top_k; the "
              "paper's Mean@32 uses 0.7 / 0.8 / 20). greedy: temperature 0. Training time: "
              "the steps' own wall time (evaluations and start-up excluded). Learner computed: the "
              "share of the trained completion tokens the learner ran forward and backward; "
              "the rest belonged to tied groups, whose zero advantage adds nothing to the "
              "update (learner.skip_zero_advantage).", ""]
    return lines


def _ratio_table(r: Dict[str, Dict[str, object]], small: str, large: str, k,
                 seeds: int) -> List[str]:
    paper_of = {"mean_at_k": f"{paper.ACCURACY_RATIO:.1%} (Mean@32)",
                "training_time": f"~{paper.TIME_RATIO:.0%}", "rollouts": "12.5% (1/8)",
                "steps": f"{paper.STEPS[2] / paper.STEPS[16]:.1%}"}
    lines = [f"## {small}-GRPO / {large}-GRPO", "",
             f"Per seed, then median (min–max) over {seeds} seed(s).", "",
             "| ratio | median | min | max | paper |", "| --- | --- | --- | --- | --- |"]
    for name, s in r.items():
        what = RATIOS[name][1].replace("mean@k", f"mean@{k}")
        lines.append(f"| {what} | {s['median']:.1%} | {s['min']:.1%} | {s['max']:.1%} | "
                     f"{paper_of.get(name, '—')} |")
    lines += ["", f"Paper: {paper.SOURCE}.", ""]
    return lines


def _sweep_table(arms: Dict[str, Dict[str, object]], k) -> List[str]:
    lines = ["## Against the group size", "",
             f"| arm | steps | rollouts | final mean@{k} | final greedy | training time (s) |",
             "| --- | --- | --- | --- | --- | --- |"]

    def cell(s: Optional[Dict[str, float]], fmt: str) -> str:
        if not s:
            return "—"
        return (f"{s['median']:{fmt}}" if s["min"] == s["max"]
                else f"{s['median']:{fmt}} ({s['min']:{fmt}}–{s['max']:{fmt}})")

    for arm, a in arms.items():
        lines.append(f"| {arm}-GRPO | {cell(a.get('steps'), '.0f')} | "
                     f"{cell(a.get('rollouts'), '.0f')} | {cell(a.get('mean_at_k_end'), '.1%')} | "
                     f"{cell(a.get('accuracy_end'), '.1%')} | "
                     f"{cell(a.get('training_seconds'), '.1f')} |")
    return lines + [""]


def _budget(run_dir: Path) -> Optional[str]:
    import yaml

    base = run_dir / "config.yaml"
    if not base.exists():
        return None
    return (yaml.safe_load(base.read_text()).get("compare") or {}).get("budget")


def _config_note(runs: Runs) -> str:
    import yaml

    parts = []
    for arm, seeds in runs.items():
        cfg = next(iter(seeds.values())) / "config.yaml"
        if cfg.exists():
            c = yaml.safe_load(cfg.read_text())
            parts.append(f"{arm}: {c['steps']} steps of {c['algo']['prompts_per_step']} "
                         f"prompts x {c['algo']['group_size']} at lr {c['learner']['lr']:.3g}")
    if not parts:
        return ""
    note = "Arms (equal rollouts per step): " + "; ".join(parts) + "."
    base = next(iter(next(iter(runs.values())).values())).parent.parent / "config.yaml"
    if base.exists():
        compare = yaml.safe_load(base.read_text()).get("compare") or {}
        if compare.get("budget") == "epochs":
            note += (f" Budget: {compare.get('epochs')} epoch(s) of one fixed prompt set "
                     "for every arm and seed (the paper's comparison).")
        elif compare.get("budget"):
            note += f" Budget: equal {compare['budget']} (compare.budget)."
        if compare.get("lr_rule"):
            note += f" Learning-rate rule: `{compare['lr_rule']}` (compare.lr_rule)."
    return note


def _write_tables(run_dir: Path, runs: Runs) -> None:
    rows: List[Dict[str, object]] = []
    for arm, seeds in runs.items():
        for seed, folder in seeds.items():
            for row in read_rows(folder / "metrics.jsonl"):
                if row.get("kind") in ("step", "eval"):
                    rows.append({"arm": arm, "seed": seed, **row})
    table = flat_table(rows)
    pq.write_table(table, run_dir / "metrics.parquet")
    pacsv.write_csv(table, run_dir / "metrics.csv")


def curves(folder: Path) -> List[Dict[str, float]]:
    """Per evaluation: rollouts so far, training seconds so far, mean@k and greedy."""
    steps = read_rows(folder / "metrics.jsonl", "step")
    out = []
    for e in read_rows(folder / "metrics.jsonl", "eval"):
        done = [r for r in steps if r["step"] <= e["step"]]
        out.append({"rollouts": float(e.get("rollouts", 0) or 0),
                    "training_seconds": sum(r.get("step_s", 0) or 0 for r in done),
                    "mean_at_k": e.get("mean_at_k"), "accuracy": e["accuracy"]})
    return out


def _banded(per_seed: List[List[Dict[str, float]]], x: str, y: str):
    """Median x, and median / min / max y, at each evaluation index all seeds reached."""
    n = min(len(c) for c in per_seed)
    xs, mid, lo, hi = [], [], [], []
    for i in range(n):
        ys = [100 * (c[i][y] or 0) for c in per_seed]
        xs.append(statistics.median(c[i][x] for c in per_seed))
        mid.append(statistics.median(ys))
        lo.append(min(ys))
        hi.append(max(ys))
    return xs, mid, lo, hi


def _plot(run_dir: Path, runs: Runs) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_rollouts, by_time, ties) = plt.subplots(1, 3, figsize=(15, 4.2))
    names, rates = [], []
    for arm, seeds in runs.items():
        per_seed = [curves(folder) for folder in seeds.values()]
        for ax, x in ((by_rollouts, "rollouts"), (by_time, "training_seconds")):
            xs, mid, lo, hi = _banded(per_seed, x, "mean_at_k")
            line, = ax.plot(xs, mid, "-o", ms=3, label=f"{arm}-GRPO mean@k")
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2)
            xs, mid, _, _ = _banded(per_seed, x, "accuracy")
            ax.plot(xs, mid, ":", color=line.get_color(), label=f"{arm}-GRPO greedy")
        names.append(f"{arm}-GRPO")
        rates.append([100 * run_numbers(f)["informative_fraction"] for f in seeds.values()])
    by_rollouts.set_xlabel("rollouts generated")
    by_time.set_xlabel("training time (s)")
    for ax in (by_rollouts, by_time):
        ax.set_ylabel("held-out accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    medians = [statistics.median(r) for r in rates]
    errors = [[m - min(r) for m, r in zip(medians, rates)],
              [max(r) - m for m, r in zip(medians, rates)]]
    ties.bar(names, medians, color=[f"C{i}" for i in range(len(names))], yerr=errors,
             capsize=4)
    ties.set_ylabel("informative (non-tied) groups (%)")
    ties.set_ylim(0, 100)
    ties.grid(alpha=0.3, axis="y")
    seeds = len(next(iter(runs.values())))
    fig.suptitle("Held-out accuracy, median over seeds with min–max band "
                 f"({seeds} seed(s)); groups that carry a learning signal")
    fig.tight_layout()
    fig.savefig(run_dir / "report.png", dpi=110)
    plt.close(fig)


def _plot_sweep(run_dir: Path, numbers: Dict[str, Dict[int, Dict[str, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plain = [a for a in numbers if "+" not in a]
    sizes = [int(a) for a in plain]
    fig, acc = plt.subplots(figsize=(6.5, 4.2))
    med = [100 * statistics.median(n["mean_at_k_end"] for n in numbers[a].values())
           for a in plain]
    acc.plot(sizes, med, "-o", label="final mean@k (median)")
    acc.set_xscale("log", base=2)
    acc.set_xticks(sizes, [str(s) for s in sizes])
    acc.set_xlabel("group size G")
    acc.set_ylabel("held-out accuracy (%)")
    time_ax = acc.twinx()
    time_ax.plot(sizes, [statistics.median(n["training_seconds"] for n in numbers[a].values())
                         for a in plain], "--s", color="tab:red", label="training time (median)")
    time_ax.set_ylabel("training time (s)")
    fig.legend(loc="lower center", ncol=2, fontsize=8)
    fig.suptitle("Accuracy and training time against the group size, at equal budget")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(run_dir / "sweep.png", dpi=110)
    plt.close(fig)
