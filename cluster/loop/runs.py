"""The run-level entry points the CLI dispatches to: train one policy, evaluate a model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Optional

from cluster.contract.config import RunConfig
from cluster.loop.driver import Driver, RunSummary
from cluster.loop.launch import start_ray, start_rollouts, stop_rollouts
from cluster.loop.progress import Progress
from cluster.policy.models import local_model, resolve_model
from cluster.tools.data import preflight


def run_dir_of(config: RunConfig) -> Path:
    return Path(config.output_dir) / config.name


def fresh_run_dir(config: RunConfig, resume: bool = False) -> Path:
    """The run's folder; a previous run found there is moved aside, never overwritten."""
    run_dir = run_dir_of(config)
    if resume or not run_dir.exists() or not any(run_dir.iterdir()):
        return run_dir
    aside = run_dir.with_name(f"{run_dir.name}.{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.rename(aside)
    print(f"{run_dir} held an earlier run: moved it to {aside} "
          "(use --resume to continue a run instead)")
    return run_dir


def train(config: RunConfig, resume: bool = False) -> RunSummary:
    """``duet train``: one policy, with live progress, into ``runs/<name>``."""
    from cluster.loop.tracking import check_installed

    check_installed(config)  # a missing tracker is said before anything starts
    run_dir = fresh_run_dir(config, resume)
    start_ray(config)
    model_path = resolve_model(config)
    preflight(config, model_path, run_dir)  # data, template and lengths, before any actor
    actors = start_rollouts(config, str(model_path), run_dir / "engines")
    progress = Progress(config.steps)
    try:
        return Driver(config, run_dir, str(model_path), actors, progress=progress,
                      resume=resume).run()
    finally:
        progress.close()


def evaluate_model(config: RunConfig, model: Optional[str], k: Optional[int],
                   out_dir: Optional[str] = None) -> Dict[str, object]:
    """``duet eval``: every evaluation set on ``model`` (default model.path), split across
    the engines; writes ``<out>/eval.json`` and the per-prompt ``<out>/<set>.jsonl``."""
    from cluster.loop.evaluation import eval_json, evaluate_sets, write_eval_json

    start_ray(config)
    path = local_model(model) if model else resolve_model(config)
    out = Path(out_dir) if out_dir else run_dir_of(config) / "eval"
    actors = start_rollouts(config, str(path), out / "engines")
    try:
        result = evaluate_sets(actors, out, k=k)
    finally:
        stop_rollouts(actors)
    written = write_eval_json(out, result)
    return {"model": str(path), "eval_json": str(written), **eval_json(result)}
