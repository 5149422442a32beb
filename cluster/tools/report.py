"""The comparison report: a table and two plots per run, computed from the arms' metrics logs.

Every number in ``report.md`` is derived here from ``arm-*/metrics.jsonl`` (``arm_numbers``),
so a reader (or a test) can recompute it from the raw log, which is also written beside the
report as ``metrics.csv`` / ``metrics.parquet`` with an ``arm`` column.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cluster.loop.run_log import read_rows
from cluster.tools import paper


def arm_dirs(run_dir: Path) -> Dict[str, Path]:
    out = {}
    for folder in sorted(Path(run_dir).glob("arm-*")):
        if (folder / "metrics.jsonl").exists():
            out[folder.name[len("arm-"):].replace("rs", "+rs")] = folder
    return dict(sorted(out.items(), key=lambda kv: (int(kv[0].split("+")[0]), kv[0])))


def arm_numbers(folder: Path) -> Dict[str, float]:
    """Headline numbers of one arm, from its metrics log only."""
    steps = read_rows(folder / "metrics.jsonl", "step")
    evals = read_rows(folder / "metrics.jsonl", "eval")
    if not evals:
        raise ValueError(f"{folder}: no evaluation rows in metrics.jsonl")
    groups = sum(r.get("groups", 0) or 0 for r in steps)
    informative = sum(r.get("informative_groups", 0) or 0 for r in steps)
    gen_s = sum(r.get("generate_s", 0) or 0 for r in steps)
    tokens = sum(r.get("completion_tokens", 0) or 0 for r in steps)
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
        "informative_fraction": informative / groups if groups else float("nan"),
        "tokens_per_s": tokens / gen_s if gen_s else float("nan"),
        "train_seconds": sum(r.get("learner_seconds", 0) or 0 for r in steps),
        "sync_seconds": sum(r.get("sync_s", 0) or 0 for r in steps),
    }


def _ratio(a: float, b: float) -> Optional[float]:
    return a / b if b else None


def write_report(run_dir: Path, title: str = "duet: 2-GRPO vs 16-GRPO") -> Path:
    """Write report.md, report.png and the combined metrics table into ``run_dir``."""
    run_dir = Path(run_dir)
    arms = arm_dirs(run_dir)
    if not arms:
        raise ValueError(f"{run_dir}: no arm-*/metrics.jsonl found; is this a compare run?")
    numbers = {arm: arm_numbers(folder) for arm, folder in arms.items()}
    _write_tables(run_dir, arms)
    _plot(run_dir, arms)
    lines = [f"# {title}", ""]
    config_note = _config_note(arms)
    if config_note:
        lines += [config_note, ""]
    k = next(iter(numbers.values())).get("k")
    header = (f"| arm | steps | mean@{k} start | mean@{k} end | greedy start | greedy end | "
              "greedy best | rollouts | wall time (s) | informative groups | "
              "completion tokens/s |")
    lines += [header, "|" + " --- |" * 11]
    for arm, n in numbers.items():
        lines.append(
            f"| {arm}-GRPO | {n['steps']:.0f} | {_pct(n['mean_at_k_start'])} | "
            f"{_pct(n['mean_at_k_end'])} | {n['accuracy_start']:.1%} | "
            f"{n['accuracy_end']:.1%} | {n['accuracy_best']:.1%} | {n['rollouts']:.0f} | "
            f"{n['wall_seconds']:.1f} | {n['informative_fraction']:.1%} | "
            f"{n['tokens_per_s']:.0f} |")
    lines += ["", f"mean@{k}: held-out accuracy averaged over {k} samples per prompt at the "
              "evaluation settings (rollout.eval_temperature / eval_top_p / eval_top_k; the "
              "paper's Mean@32 uses 0.7 / 0.8 / 20). greedy: temperature 0."]
    lines.append("")
    if "2" in numbers and "16" in numbers:
        two, sixteen = numbers["2"], numbers["16"]
        acc = _ratio(two["mean_at_k_end"], sixteen["mean_at_k_end"])
        greedy = _ratio(two["accuracy_end"], sixteen["accuracy_end"])
        gain = _ratio(two["mean_at_k_end"] - two["mean_at_k_start"],
                      sixteen["mean_at_k_end"] - sixteen["mean_at_k_start"])
        time_ratio = _ratio(two["wall_seconds"], sixteen["wall_seconds"])
        lines += [
            "## 2-GRPO / 16-GRPO",
            "",
            "| ratio | duet (this run) | paper |",
            "| --- | --- | --- |",
            f"| final accuracy (mean@{k}) | {_fmt(acc)} | {paper.ACCURACY_RATIO:.1%} (Mean@32) |",
            f"| final accuracy (greedy) | {_fmt(greedy)} | — |",
            f"| mean@{k} gain over the start | {_fmt(gain)} | — |",
            f"| training wall time | {_fmt(time_ratio)} | ~{paper.TIME_RATIO:.0%} |",
            "",
            f"Paper: {paper.SOURCE}.",
            "",
            "What differs here: "
            + ("a ~0.8M-parameter model warm-started on synthetic 2-digit addition by a "
               "teacher that answers the sum plus one 60% of the time (a wrong habit for RL "
               "to unlearn) instead of Qwen2.5-Math on MATH; " if _embedded(arms) else "")
            + f"{_rollouts_per_step(arms)} rollouts per step"
            + (" instead of 512; CPU engines" if _embedded(arms) else "")
            + "; both arms run the same number of steps with the same "
            "rollouts per step, so — unlike the paper, whose 2-GRPO arm also used 1/8 of the "
            "rollouts over its training — the time ratio here measures per-rollout cost, not "
            "a smaller rollout budget. On a tiny model generation is cheap, so the paper's "
            "time savings, which come from generating fewer long completions, mostly do not "
            "show; the accuracy ratio is the comparable figure. Wall time counts training "
            "and evaluation from the first evaluation on (engine and learner start-up "
            "excluded).",
            "",
        ]
    lines += ["![accuracy against rollouts and wall time](report.png)", "",
              "Raw metrics: `metrics.csv` / `metrics.parquet` (one row per step and per "
              "evaluation, `arm` column).", ""]
    path = run_dir / "report.md"
    tmp = run_dir / ".report.md.tmp"
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)
    (run_dir / "report.json").write_text(json.dumps(numbers, indent=1))
    return path


def _pct(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.1%}"


def _fmt(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.1%}"


def _rollouts_per_step(arms: Dict[str, Path]) -> str:
    import yaml

    for folder in arms.values():
        if (folder / "config.yaml").exists():
            c = yaml.safe_load((folder / "config.yaml").read_text())["algo"]
            return str(c["prompts_per_step"] * c["group_size"])
    return "fewer"


def _config_note(arms: Dict[str, Path]) -> str:
    parts = []
    for arm, folder in arms.items():
        cfg = folder / "config.yaml"
        if cfg.exists():
            import yaml

            c = yaml.safe_load(cfg.read_text())
            parts.append(f"{arm}: {c['algo']['prompts_per_step']} prompts x "
                         f"{c['algo']['group_size']} at lr {c['learner']['lr']:.3g}")
    if not parts:
        return ""
    note = "Arms (equal rollouts per step): " + "; ".join(parts) + "."
    base = arms[next(iter(arms))].parent / "config.yaml"
    if base.exists():
        import yaml

        rule = (yaml.safe_load(base.read_text()).get("compare") or {}).get("lr_rule")
        if rule:
            note += f" Learning-rate rule: `{rule}` (compare.lr_rule)."
    return note


def _embedded(arms: Dict[str, Path]) -> bool:
    cfg = arms[next(iter(arms))] / "config.yaml"
    if not cfg.exists():
        return False
    import yaml

    return str(yaml.safe_load(cfg.read_text())["model"]["path"]).startswith("embedded:")


def _write_tables(run_dir: Path, arms: Dict[str, Path]) -> None:
    rows: List[Dict[str, object]] = []
    for arm, folder in arms.items():
        for row in read_rows(folder / "metrics.jsonl"):
            if row.get("kind") in ("step", "eval"):
                rows.append({"arm": arm, **row})
    keys: List[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    table = pa.table({k: [r.get(k) for r in rows] for k in keys})
    pq.write_table(table, run_dir / "metrics.parquet")
    pacsv.write_csv(table, run_dir / "metrics.csv")


def _plot(run_dir: Path, arms: Dict[str, Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_rollouts, by_time) = plt.subplots(1, 2, figsize=(11, 4.2))
    for arm, folder in arms.items():
        evals = read_rows(folder / "metrics.jsonl", "eval")
        for key, style in (("mean_at_k", "-o"), ("accuracy", ":x")):
            acc = [100 * (e.get(key) or 0) for e in evals]
            label = f"{arm}-GRPO {'mean@k' if key == 'mean_at_k' else 'greedy'}"
            by_rollouts.plot([e["rollouts"] for e in evals], acc, style, label=label)
            by_time.plot([e["wall_s"] for e in evals], acc, style, label=label)
    by_rollouts.set_xlabel("rollouts generated")
    by_time.set_xlabel("wall time (s)")
    for ax in (by_rollouts, by_time):
        ax.set_ylabel("held-out accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Held-out accuracy: arms side by side")
    fig.tight_layout()
    fig.savefig(run_dir / "report.png", dpi=110)
    plt.close(fig)
